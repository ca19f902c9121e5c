"""python -m koala: what this installation can do."""
import os
import sys

import koala


def main():
    lib = koala.library_path()
    plugin = os.path.join(os.path.dirname(lib), "libkoala_cuda.so") if lib else None
    has_plugin = bool(plugin and os.path.exists(plugin))
    gpu, why = koala.device_available()
    print(f"libkoala {koala.version()} (header {koala.capi.KOALA_VERSION_MAJOR}."
          f"{koala.capi.KOALA_VERSION_MINOR}.{koala.capi.KOALA_VERSION_PATCH})")
    print(f"library:     {lib or 'unknown'}")
    print(f"CUDA plugin: {'yes (' + plugin + ')' if has_plugin else 'no (host-only build)'}")
    print(f"GPU usable:  {'yes' if gpu else 'no: ' + why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
