"""A hint for one confusing failure, loaded at interpreter start by
libkoala-shadow-hint.pth (installed next to the `koala` package).

Run from inside the official KOALA repository, `import koala` finds that
repository's koala.py before this package, and `from koala.torch import ...`
then fails with "'koala' is not a package", before any code of this package
runs. This hook changes nothing about what gets imported: when a module
`koala` that is not this package is loaded, it only gives that module an
empty __path__, so that a later `import koala.<name>` reaches the finder
below, which raises ModuleNotFoundError saying which file shadows the package
and what to do.
"""
import importlib.abc
import importlib.machinery
import os
import sys

_PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "koala", "__init__.py")


class _MarkShadowing(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: looks where `koala` would come from."""

    busy = False

    def find_spec(self, name, path=None, target=None):
        if name != "koala" or self.busy or not os.path.exists(_PACKAGE):
            return None
        self.busy = True
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        finally:
            self.busy = False
        if spec is None or spec.origin is None or spec.submodule_search_locations is not None \
                or os.path.realpath(spec.origin) == os.path.realpath(_PACKAGE):
            return None
        run = spec.loader.exec_module
        origin = spec.origin

        def exec_module(module):
            run(module)
            module.__path__ = []                # a later koala.<name> asks the finders
            module.__libkoala_shadowed_by__ = origin
        spec.loader.exec_module = exec_module
        return spec


class _Hint(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: the hint for koala.<name> under a shadowing koala."""

    def find_spec(self, name, path=None, target=None):
        if not name.startswith("koala."):
            return None
        origin = getattr(sys.modules.get("koala"), "__libkoala_shadowed_by__", None)
        if origin is None:
            return None
        raise ModuleNotFoundError(
            f"No module named {name!r}: the 'koala' imported here is {origin}, not libkoala's "
            f"package ({os.path.dirname(_PACKAGE)}). A koala.py in the current directory or "
            "the script's (the official KOALA repository has one) shadows it: run from another "
            "directory, or rename that file.", name=name)


def install():
    if not any(isinstance(f, _MarkShadowing) for f in sys.meta_path):
        sys.meta_path.insert(0, _MarkShadowing())
        sys.meta_path.append(_Hint())


install()
