#!/usr/bin/env python3
"""The export list of libkoala.so.1 against its sources of truth.

    check_exports.py KOALA_H KOALA_1_0_H KOALA_MAP LIBRARY [NM]
    check_exports.py --self-test KOALA_H KOALA_1_0_H KOALA_MAP LIBRARY [NM]

Checks, each with a message saying what differs:
  1. src/koala.map lists exactly the functions include/koala.h declares
     KOALA_API, each once;
  2. the map's first node is KOALA_1.0, ends in `local: *;` and holds exactly
     the functions the frozen 1.0 header (tests/abi/koala-1.0.h) declares;
     every other function sits in a later node KOALA_<major>.<minor> that is
     not newer than koala.h's version, and each later node inherits the one
     before it;
  3. the dynamic symbols LIBRARY defines (`nm -D --defined-only`) are exactly
     the map's functions, each the default version (@@) of the node the map
     gives it; nothing else is exported (no libstdc++ template instances, no
     unversioned symbol), apart from the version nodes' own names.

--self-test runs the same checks on deliberately broken copies of the
inputs (a function added to koala.h only, a stray exported symbol, a
function in the wrong node, an unversioned export, ...) and fails unless
every one of them is caught, so the check itself is known to bite.
Python 3 standard library only.
"""
import re
import subprocess
import sys


class Mismatch(Exception):
    pass


def strip_c(text):
    """C source without comments and preprocessor lines (with their
    backslash continuations), so macros such as koala_config_init's
    definition are not taken for declarations."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    out, continued = [], False
    for line in text.split("\n"):
        is_pp = continued or line.lstrip().startswith("#")
        continued = is_pp and line.rstrip().endswith("\\")
        if not is_pp:
            out.append(line)
    return "\n".join(out)


def api_functions(header_text):
    """Names of the functions a header declares KOALA_API, in order. The
    name is the identifier right before the parameter list, also when it
    is parenthesised against a macro of the same name:
    `KOALA_API void (koala_config_init)(koala_config *cfg, ...)`."""
    names = []
    for decl in re.findall(r"\bKOALA_API\b([^;{]*)", strip_c(header_text)):
        # `T (name)(...)` or `T name(...)`: look at the first parenthesis.
        m = re.match(r"[^(]*\(\s*([A-Za-z_]\w*)\s*\)\s*\(", decl) or \
            re.match(r"[^(]*?\b([A-Za-z_]\w*)\s*\(", decl)
        if not m:
            raise Mismatch(f"cannot read a function name from: KOALA_API{decl.strip()}")
        names.append(m.group(1))
    return names


def header_version(header_text):
    major = re.search(r"#define\s+KOALA_VERSION_MAJOR\s+(\d+)", header_text)
    minor = re.search(r"#define\s+KOALA_VERSION_MINOR\s+(\d+)", header_text)
    if not major or not minor:
        raise Mismatch("koala.h does not define KOALA_VERSION_MAJOR / KOALA_VERSION_MINOR")
    return int(major.group(1)), int(minor.group(1))


def parse_map(map_text):
    """[(node, parent or None, [global symbols], has `local: *`)] of a GNU
    ld version script."""
    text = re.sub(r"/\*.*?\*/", " ", map_text, flags=re.S)
    text = re.sub(r"#[^\n]*", " ", text)
    nodes = []
    pos = 0
    pattern = re.compile(r"\s*([A-Za-z_][\w.]*)\s*\{(.*?)\}\s*([A-Za-z_][\w.]*)?\s*;", re.S)
    while True:
        m = pattern.match(text, pos)
        if not m:
            break
        name, body, parent = m.group(1), m.group(2), m.group(3)
        symbols, has_local, scope = [], False, None
        for item in body.split(";"):
            item = item.strip()
            if not item:
                continue
            sm = re.match(r"(global|local)\s*:\s*(.*)$", item, re.S)
            if sm:
                scope, item = sm.group(1), sm.group(2).strip()
                if not item:
                    continue
            if scope == "local":
                has_local = has_local or item == "*"
            elif scope == "global":
                symbols.append(item)
            else:
                raise Mismatch(f"koala.map: '{item}' in node {name} is outside global:/local:")
        nodes.append((name, parent, symbols, has_local))
        pos = m.end()
    if text[pos:].strip():
        raise Mismatch(f"koala.map: cannot parse from: {text[pos:].strip()[:60]!r}")
    if not nodes:
        raise Mismatch("koala.map: no version node")
    return nodes


def node_version(name):
    m = re.fullmatch(r"KOALA_(\d+)\.(\d+)", name)
    if not m:
        raise Mismatch(f"koala.map: node {name} is not named KOALA_<major>.<minor>")
    return int(m.group(1)), int(m.group(2))


def read_nm(library, nm="nm"):
    """nm -D --defined-only LIBRARY as [(type, name with @/@@version)]."""
    out = subprocess.run([nm, "-D", "--defined-only", library], check=True,
                         capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            syms.append((parts[-2], parts[-1]))
    return syms


def check(header_text, header10_text, map_text, dynsyms):
    """Raises Mismatch naming every difference; returns a summary line."""
    problems = []
    declared = api_functions(header_text)
    declared10 = api_functions(header10_text)
    version = header_version(header_text)
    nodes = parse_map(map_text)

    # 1. the map lists exactly koala.h's functions, each once.
    node_of = {}
    for name, _, symbols, _ in nodes:
        for s in symbols:
            if s in node_of:
                problems.append(f"koala.map lists {s} twice ({node_of[s]} and {name})")
            node_of[s] = name
    for f in sorted(set(declared) - set(node_of)):
        problems.append(f"{f} is declared KOALA_API in koala.h but koala.map does not list it")
    for s in sorted(set(node_of) - set(declared)):
        problems.append(f"koala.map lists {s}, which koala.h does not declare KOALA_API")
    for f in sorted({f for f in declared if declared.count(f) > 1}):
        problems.append(f"koala.h declares {f} KOALA_API more than once")

    # 2. node structure: KOALA_1.0 first with local: *, later nodes inherit.
    first, first_parent, first_syms, first_local = nodes[0]
    if first != "KOALA_1.0" or first_parent is not None:
        problems.append(f"koala.map's first node is {first} (parent {first_parent}); "
                        "expected KOALA_1.0 with no parent")
    if not first_local:
        problems.append("koala.map: the KOALA_1.0 node lacks `local: *;` (everything else "
                        "would be exported)")
    if set(first_syms) != set(declared10):
        for f in sorted(set(declared10) - set(first_syms)):
            problems.append(f"{f} is a 1.0 function (tests/abi/koala-1.0.h) but is not in "
                            f"node KOALA_1.0 (it is in {node_of.get(f, 'no node')})")
        for f in sorted(set(first_syms) - set(declared10)):
            problems.append(f"{f} is in node KOALA_1.0 but libkoala 1.0 did not have it")
    for f in sorted(set(declared10) - set(declared)):
        problems.append(f"{f} was in 1.0 but koala.h no longer declares it (an ABI break)")
    previous = None
    for name, parent, _, has_local in nodes:
        try:
            v = node_version(name)
        except Mismatch as e:
            problems.append(str(e))
            continue
        if previous is not None:
            if parent != previous[0]:
                problems.append(f"koala.map: node {name} inherits {parent}; expected "
                                f"{previous[0]}, the node before it")
            if v <= previous[1]:
                problems.append(f"koala.map: node {name} is not newer than {previous[0]}")
            if has_local:
                problems.append(f"koala.map: node {name} repeats `local:` (only KOALA_1.0 has it)")
        if v > version:
            problems.append(f"koala.map: node {name} is newer than koala.h's version "
                            f"{version[0]}.{version[1]}")
        previous = (name, v)

    # 3. the built library exports exactly the map, in its nodes.
    node_names = {n for n, _, _, _ in nodes}
    exported = {}
    for typ, sym in dynsyms:
        base, sep, ver = sym.partition("@")
        if typ == "A" and base in node_names and not sep:
            continue  # a version node's own (absolute) symbol
        if not sep:
            problems.append(f"the library exports {sym} (type {typ}) without a symbol version")
            continue
        default = ver.startswith("@")
        ver = ver.lstrip("@")
        if base not in node_of:
            problems.append(f"the library exports {sym} (type {typ}), which is not a koala.h "
                            "function")
            continue
        if not default:
            problems.append(f"the library exports {sym} as a non-default version")
        if typ not in ("T", "W", "i"):
            problems.append(f"the library exports {sym} as type {typ}, not as a function")
        if ver != node_of[base]:
            problems.append(f"the library exports {base} in version {ver}; koala.map puts it "
                            f"in {node_of[base]}")
        exported[base] = ver
    for s in sorted(set(node_of) - set(exported)):
        problems.append(f"koala.map lists {s} but the library does not export it")
    if problems:
        raise Mismatch("\n".join(problems))
    counts = ", ".join(f"{n}: {len(s)}" for n, _, s, _ in nodes)
    return f"{len(exported)} exported functions, all in koala.h and koala.map ({counts})"


def self_test(header, header10, map_text, dynsyms):
    """Every mutation of the (passing) inputs must be caught."""
    extra = ("KOALA_API koala_status koala_brand_new(koala_optimizer *opt);\n"
             "#ifdef __cplusplus")
    one_ten = next(f for f in api_functions(header) if f not in api_functions(header10))
    mutations = {
        "a function added to koala.h only": (header.replace("#ifdef __cplusplus", extra, 1),
                                             header10, map_text, dynsyms),
        "a function removed from koala.h only": (
            re.sub(r"KOALA_API koala_status koala_set_lr\([^;]*;", "", header),
            header10, map_text, dynsyms),
        "a stray libstdc++ template symbol exported": (
            header, header10, map_text,
            dynsyms + [("W", "_ZNSt6vectorIPvSaIS0_EE17_M_default_appendEm@@KOALA_1.0")]),
        "an unversioned export": (header, header10, map_text,
                                  dynsyms + [("T", "koala_internal_helper")]),
        "a koala_ symbol exported that koala.h lacks": (
            header, header10, map_text, dynsyms + [("T", "koala_debug_dump@@KOALA_1.1")]),
        "a map function missing from the library": (
            header, header10, map_text,
            [d for d in dynsyms if not d[1].startswith("koala_posterior@")]),
        f"{one_ten} exported in KOALA_1.0": (
            header, header10, map_text,
            [(t, s.replace(f"{one_ten}@@KOALA_1.1", f"{one_ten}@@KOALA_1.0"))
             for t, s in dynsyms]),
        "koala_create moved to node KOALA_1.1 in the map": (
            header, header10,
            map_text.replace("    koala_create;\n", "", 1).replace(
                "KOALA_1.1 {\n  global:\n", "KOALA_1.1 {\n  global:\n    koala_create;\n", 1),
            dynsyms),
        "a map without local: *": (header, header10, map_text.replace("local:\n    *;", ""),
                                   dynsyms),
        "a non-default (@) version exported": (
            header, header10, map_text,
            [(t, s.replace("koala_version@@", "koala_version@")) for t, s in dynsyms]),
        "a 1.0 function dropped from koala.h and the map": (
            re.sub(r"KOALA_API koala_status koala_device_probe\(void\);", "", header),
            header10, map_text.replace("    koala_device_probe;\n", ""),
            [d for d in dynsyms if not d[1].startswith("koala_device_probe@")]),
    }
    caught = 0
    for what, args in mutations.items():
        try:
            check(*args)
        except Mismatch as e:
            caught += 1
            print(f"self-test: caught {what}: {str(e).splitlines()[0]}")
            continue
        print(f"self-test: NOT caught: {what}")
    if caught != len(mutations):
        raise Mismatch(f"self-test: only {caught} of {len(mutations)} broken inputs were caught")
    return f"self-test: all {caught} broken inputs caught"


def main(argv):
    args = [a for a in argv[1:] if a != "--self-test"]
    if len(args) not in (4, 5):
        print(__doc__)
        return 2
    header_path, header10_path, map_path, library = args[:4]
    nm = args[4] if len(args) == 5 else "nm"
    read = lambda p: open(p, encoding="utf-8").read()
    header, header10, map_text = read(header_path), read(header10_path), read(map_path)
    try:
        dynsyms = read_nm(library, nm)
        summary = check(header, header10, map_text, dynsyms)
        print(f"check_exports: {library}: {summary}")
        if "--self-test" in argv:
            print(self_test(header, header10, map_text, dynsyms))
    except Mismatch as e:
        print(f"check_exports: FAILED\n{e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
