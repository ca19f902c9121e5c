"""Makes a wheel's bundled libkoala loadable before koala.capi is imported.

`pip install .` (meson-python) bundles the shared libraries of the project in
site-packages/.libkoala.mesonpy.libs/ and puts that folder on the
extension's RUNPATH, but copies only the real file libkoala.so.1.0.0, not the
soname link libkoala.so.1 that the extension asks the loader for. Loading the
bundled file by path first settles it: the dynamic loader matches an already
loaded library by its soname. The CUDA plugin sits in the same folder, where
libkoala looks for it (next to itself).

In a build tree or a `meson install`, the folder does not exist and this
does nothing (RUNPATH or the system's library path find libkoala).
"""
import ctypes
import os

_BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       ".libkoala.mesonpy.libs")
_handles = []   # kept for the life of the process


def preload():
    if _handles or not os.path.isdir(_BUNDLE):
        return
    for name in sorted(os.listdir(_BUNDLE)):
        if name.startswith("libkoala.so"):
            _handles.append(ctypes.CDLL(os.path.join(_BUNDLE, name)))
            return
