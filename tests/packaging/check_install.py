#!/usr/bin/env python3
"""check_install.py BUILD_DIR SOURCE_DIR: what `meson install` does with this
build (meson test install, suite packaging).

1. The install plan: every installed file has an install tag; libraries are
   `runtime`, headers, koala.mod and the .pc files `devel`, the Python
   package (extension included) `python-runtime`, the API reference `docs`;
   koala.mod sits in a compiler-specific directory below includedir, not in
   includedir itself.
2. `meson install --tags T` into a scratch DESTDIR for each tag installs
   exactly that part (and something of it).
3. A full install into a scratch DESTDIR: tests/packaging/hello.f90 builds
   with `pkg-config --cflags --libs koala-fortran` against the installed
   files only and runs; then `ninja uninstall` leaves nothing behind.

The build's meson-logs/install-log.txt (which `ninja uninstall` reads) is
restored afterwards, so a real install made before the test can still be
uninstalled. Runs alone (is_parallel: false): the installs would otherwise
race with other tests' installs over that log.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

# meson's timeout sends SIGTERM: unwind through `finally`, which restores the
# install log and removes the scratch directory
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

build, source = sys.argv[1], sys.argv[2]
failures = []
checks = 0


def check(ok, what):
    global checks
    checks += 1
    print(("ok " if ok else "not ok ") + str(checks) + " - " + what, flush=True)
    if not ok:
        failures.append(what)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def files_under(root):
    out = []
    for d, _, names in os.walk(root):
        for n in names:
            out.append(os.path.relpath(os.path.join(d, n), root))
    return sorted(out)


with open(os.path.join(build, "meson-info", "intro-install_plan.json")) as f:
    plan = json.load(f)
entries = [(dest, info.get("tag")) for group in plan.values() for dest, info in
           ((i["destination"], i) for i in group.values())]

# ---- 1. the plan -----------------------------------------------------------
untagged = [d for d, t in entries if not t]
check(not untagged, "every installed file has an install tag" + (f" (untagged: {untagged})" if untagged else ""))


def tags_of(pred):
    return {t for d, t in entries if pred(d)}


check(tags_of(lambda d: "/libkoala.so" in d or "/libkoala_fortran.so" in d) == {"runtime"},
      "libkoala and libkoala_fortran: tag runtime")
check(tags_of(lambda d: d.endswith("koala.h") or d.endswith(".pc")) == {"devel"},
      "koala.h and the .pc files: tag devel")
mods = [(d, t) for d, t in entries if d.endswith("koala.mod")]
fortran = bool(mods)
if fortran:
    d, t = mods[0]
    parts = d.split("/")
    check(len(mods) == 1 and t == "devel" and parts[0] == "{includedir}" and parts[1] == "koala"
          and len(parts) == 4 and parts[2] != "",
          f"koala.mod in a compiler-specific directory, tag devel: {d} ({t})")
    check(any(d.endswith("pkgconfig/koala-fortran.pc") for d, _ in entries), "koala-fortran.pc is installed")
    mod_subdir = "/".join(parts[1:3])
else:
    print("# no Fortran in this build: koala.mod checks skipped")
py = [(d, t) for d, t in entries if d.startswith("{py_platlib}") or d.startswith("{py_purelib}")]
if py:
    check({t for _, t in py} == {"python-runtime"} and any("_capi" in d for d, _ in py),
          "the Python package, extension included: tag python-runtime")
docs = [(d, t) for d, t in entries if d.startswith("{datadir}/doc") or d.startswith("{mandir}")]
if docs:
    check({t for _, t in docs} == {"docs"}, "the API reference (HTML, man3): tag docs")
else:
    print("# no API reference in this build (doxygen missing): docs checks skipped")

log = os.path.join(build, "meson-logs", "install-log.txt")
saved_log = log + ".check-install-saved"
had_log = os.path.exists(log)
if had_log:
    shutil.copy2(log, saved_log)
scratch = tempfile.mkdtemp(prefix="koala-install.")
try:
    def install(dest, tags=None):
        cmd = ["meson", "install", "-C", build, "--no-rebuild", "--quiet", "--destdir", dest]
        if tags:
            cmd += ["--tags", tags]
        run(cmd, stdout=subprocess.DEVNULL)
        return files_under(dest)

    # ---- 2. one tag at a time ---------------------------------------------
    parts = {
        "runtime": lambda f: "/lib" in "/" + f and ".so" in f and "python" not in f,
        "devel": lambda f: "/include/" in "/" + f or f.endswith(".pc") or f.endswith("/libkoala.so")
        or f.endswith("/libkoala_fortran.so"),
        "python-runtime": lambda f: "python" in f or "site-packages" in f,
        "docs": lambda f: "/share/doc/" in "/" + f or "/share/man/" in "/" + f,
    }
    must = {
        "runtime": ["libkoala.so.1"],
        "devel": ["include/koala.h", "pkgconfig/koala.pc"] +
                 ([f"include/{mod_subdir}/koala.mod", "pkgconfig/koala-fortran.pc"] if fortran else []),
        "python-runtime": ["koala/__init__.py", "_capi"] if py else [],
        "docs": ["html/index.html", "man3/koala_create.3", "man3/koala_config.3"] if docs else [],
    }
    for tag, belongs in parts.items():
        if not must[tag]:
            continue
        got = install(os.path.join(scratch, tag), tag)
        strays = [f for f in got if not belongs(f)]
        missing = [m for m in must[tag] if not any(m in f for f in got)]
        check(got and not strays and not missing,
              f"meson install --tags {tag}: {len(got)} files, only that part"
              + (f"; strays {strays[:5]}" if strays else "") + (f"; missing {missing}" if missing else ""))
        shutil.rmtree(os.path.join(scratch, tag), ignore_errors=True)

    # ---- 3. a full install, a Fortran consumer, uninstall --------------------
    full = os.path.join(scratch, "full")
    got = install(full)
    check(len(got) > 5, f"meson install: {len(got)} files")
    fc = os.environ.get("FC") or shutil.which("gfortran")
    if fortran and fc and shutil.which("pkg-config"):
        pcs = [os.path.join(full, f) for f in got if f.endswith("koala-fortran.pc")]
        env = dict(os.environ, PKG_CONFIG_LIBDIR=os.path.dirname(pcs[0]), PKG_CONFIG_PATH="",
                   PKG_CONFIG_SYSROOT_DIR=full)
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "koala-fortran"], env=env,
                               check=True, capture_output=True, text=True).stdout.split()
        print("# pkg-config --cflags --libs koala-fortran:", " ".join(flags))
        exe = os.path.join(scratch, "hello")
        build_ok = subprocess.run([fc, os.path.join(source, "tests", "packaging", "hello.f90"), "-o", exe]
                                  + flags, cwd=scratch).returncode == 0
        check(build_ok, "hello.f90 builds with pkg-config koala-fortran against the install only")
        if build_ok:
            libdirs = [f[2:] for f in flags if f.startswith("-L")]
            out = subprocess.run([exe], env=dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs)),
                                 capture_output=True, text=True)
            print("# " + out.stdout.strip())
            ldd = subprocess.run(["ldd", exe], env=dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs)),
                                 capture_output=True, text=True).stdout
            check(out.returncode == 0 and all(full in line for line in ldd.splitlines() if "koala" in line),
                  "hello.f90 runs on the installed libkoala_fortran/libkoala (one KOALA++ step)")
    else:
        print("# no gfortran or pkg-config: the Fortran consumer is skipped")
    run(["ninja", "-C", build, "uninstall"], stdout=subprocess.DEVNULL)
    left = files_under(full) if os.path.exists(full) else []
    check(not left, "ninja uninstall removes every installed file (koala.mod, docs, .pc included)"
          + (f"; left: {left[:8]}" if left else ""))
finally:
    shutil.rmtree(scratch, ignore_errors=True)
    if had_log:
        shutil.move(saved_log, log)
    elif os.path.exists(log):
        os.remove(log)

print(f"1..{checks}")
print(f"# {checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
