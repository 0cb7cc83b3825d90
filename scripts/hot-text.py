#!/usr/bin/env python3
"""Regenerate strata/hot-text.ld: the functions a VM's start-up and run execute, placed together.

Why: a VMM process's resident text is not the code it runs but every page the kernel's
fault-around maps next to it (64 KiB per fault), and the linker scatters the few hundred
functions a start-up runs over the whole 3.6 MiB of .text. Listing them first in one output
section keeps a running VM's text to those pages (docs/decisions/0024).

How: runs `strata` under valgrind's callgrind for a few typical starts (the one-line density
guest; a VM behind --api-socket with ping/info/shutdown through `strata remote`), collects every
function executed (mangled names), and writes a linker script fragment that collects their
sections (`.text.<mangled name>` with the hash replaced by `*`, so the script survives rebuilds
and matches every instantiation of a generic function) into `.text.hot`, inserted before `.text`.
strata/build.rs passes it to the linker for the `strata` binary.

Run by hand after a change that moves the start-up path (needs valgrind):
  cargo build --release && python3 scripts/hot-text.py
"""
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release")
STRATA = os.path.join(REL, "strata")
OUT = os.path.join(ROOT, "strata/hot-text.ld")


def guest(name):
    return subprocess.check_output([os.path.join(REL, "guest-path"), name], text=True).strip()


def callgrind(argv, out_dir, tag, background=False):
    cmd = ["valgrind", "--tool=callgrind", "--demangle=no", "--trace-children=yes",
           f"--callgrind-out-file={out_dir}/{tag}.%p", *argv]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   timeout=120)
    return None


def run_scenarios(out_dir):
    # 1. The one-line guest: start, print, ACPI shutdown, exit (what bench/density.py runs).
    callgrind([STRATA, "run", "--kernel", guest("density"), "--memory", "size=128M"],
              out_dir, "run")
    # 2. A VM behind the REST API, driven by `strata remote`.
    sock = os.path.join(out_dir, "api.sock")
    vm = callgrind([STRATA, "run", "--kernel", guest("density-stay"), "--memory", "size=128M",
                    "--api-socket", sock], out_dir, "api", background=True)
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    else:
        vm.kill()
        sys.exit("hot-text: the API socket never appeared")
    for action in ["ping", "info", "counters", "shutdown-vmm"]:
        callgrind([STRATA, "remote", "--api-socket", sock, action], out_dir, "remote")
    vm.wait(timeout=60)


def executed_functions(out_dir):
    names = set()
    for path in glob.glob(os.path.join(out_dir, "*.*")):
        if path.endswith(".sock"):
            continue
        with open(path, errors="replace") as f:
            for line in f:
                m = re.match(r"^c?fn=\(\d+\) (\S+)", line)
                if m:
                    names.add(re.sub(r"'\d+$", "", m.group(1)))
    return names


def exact(name):
    """The input sections of exactly this function (and its ThinLTO-promoted copy), or None."""
    if not name.startswith(("_ZN", "_R")):
        return None
    name = re.sub(r"\.llvm\.\d+$", "", name)
    return f".text.{name} .text.{name}.llvm.* .text.unlikely.{name} .text.unlikely.{name}.llvm.*"


def pattern(name):
    """The input-section globs for a Rust function, or None for C code.

    These come after the exact names: they keep working when a new toolchain or dependency
    changes the hashes, at the price of taking in every instantiation of a generic function.

    Our crates use legacy mangling: the name with its hash wild (`_ZN...17h*`). The prebuilt
    standard library uses v0 mangling: the name with its crates' disambiguators wild
    (`Cs*_`). ThinLTO's promoted copies (`....llvm.<number>`) match too, and #[cold]
    functions (RawVec::grow_one, the slow paths of collections) are emitted into
    `.text.unlikely.<name>`."""
    name = re.sub(r"\.llvm\.\d+$", "", name)
    m = re.fullmatch(r"(_ZN.*)17h[0-9a-f]{16}E", name)
    if m:
        glob_name = m.group(1) + "17h*"
    elif name.startswith("_R"):
        glob_name = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", name) + "*"
    else:
        return None  # C code (glibc: not built with function sections) and unnamed stubs
    return f".text.{glob_name} .text.unlikely.{glob_name}"


# glibc's string functions are chosen at run time (IFUNC) among per-CPU variants, and valgrind
# reports them under their public name: keep the variants of these too.
IFUNC_ALIASES = {"memcpy": "memmove", "mempcpy": "memmove", "bcmp": "memcmp", "index": "strchr",
                 "rindex": "strrchr"}
VARIANTS = ("avx", "evex", "erms", "sse4")
# libm.a is a linker script naming libm-<version>.a.
C_LIBS = ["/usr/lib/x86_64-linux-gnu/libc.a",
          *glob.glob("/usr/lib/x86_64-linux-gnu/libm-*.a")]


def c_members(names):
    """The archive members (glibc is one function per object, no function sections) that
    define the executed C functions, or a CPU-specific variant of one, as `*lib.a:member.o`."""
    defined = {}
    for lib in C_LIBS:
        if not os.path.exists(lib):
            continue
        out = subprocess.run(["nm", "-A", "--defined-only", lib], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[1] not in "TtWwi":
                continue
            where = parts[0].rsplit(":", 2)  # path:member:address
            defined.setdefault(parts[2], set()).add(f"*{os.path.basename(where[0])}:{where[1]}")
    members = set()
    for name in names:
        if name.startswith(("_ZN", "_R", "0x", "(")):
            continue
        members |= defined.get(name, set())
        variant = re.match(r"__([a-z0-9]+?)_(sse|ssse|avx|evex|erms)", name)
        bases = {name, IFUNC_ALIASES.get(name, name), variant.group(1) if variant else name,
                 name.removesuffix("_ifunc")}
        for base in bases:
            for sym, where in defined.items():
                if sym.startswith(f"__{base}_") and any(v in sym for v in VARIANTS):
                    members |= where
    return members


def main():
    if not os.path.exists(STRATA):
        sys.exit(f"hot-text: {STRATA} is missing; run cargo build --release first")
    with tempfile.TemporaryDirectory() as tmp:
        run_scenarios(tmp)
        names = executed_functions(tmp)
    exacts = sorted({p for p in map(exact, names) if p})
    patterns = sorted({p for p in map(pattern, names) if p})
    members = sorted(c_members(names))
    if len(patterns) < 100:
        sys.exit(f"hot-text: only {len(patterns)} Rust functions seen; is valgrind working?")
    with open(OUT, "w") as f:
        f.write("/* Generated by scripts/hot-text.py: the functions Strata's start-up and a running\n"
                "   VM execute, kept together at the start of the code (docs/decisions/0024).\n"
                "   Regenerate, do not edit. */\n")
        f.write("SECTIONS\n{\n  .text.hot : {\n    *(.text.main)\n")
        for p in exacts:
            f.write(f"    *({p})\n")
        for m in members:
            f.write(f"    {m}(.text .text.*)\n")
        for p in patterns:
            f.write(f"    *({p})\n")
        f.write("  }\n}\nINSERT BEFORE .text;\n")
    print(f"hot-text: {len(patterns)} Rust functions, {len(members)} C objects -> "
          f"{os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
