#!/usr/bin/env python3
"""Locked (atomic read-modify-write) instructions executed per request, from a callgrind
profile: callgrind counts them as one instruction each, but each costs about 4 ns on this
host's cores (a full barrier; `lock add` in a loop), the price of ~15 plain instructions.

  DUMP_INSTR=1 python3 bench/callgrind.py 10000              # profiles with addresses
  python3 bench/locks.py bench/out/callgrind.edgemesh.1 10000 [TOP] [FUNCTION-SUBSTRING]

Prints the total per request and the functions that execute them (TOP, default 30); with a
function name, also each locked instruction in it with the calls next to it (objdump), to
tell which atomic it is. Counts `lock`-prefixed instructions and `xchg` with memory. The
binaries must be the ones profiled: a rebuild moves every address.
"""
import re, subprocess, sys
from collections import defaultdict
path, N = sys.argv[1], float(sys.argv[2])
top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
counts = defaultdict(lambda: defaultdict(int))  # ob -> addr -> count
fnof = {}
obnames, fnnames = {}, {}
ob = fn = None
addr = 0
skip_next = False
def pos(tok, cur):
    """An instruction address: absolute, or relative to the previous one (callgrind's
    position compression)."""
    if tok == "*": return cur
    if tok[0] in "+-": return cur + int(tok, 0)
    return int(tok, 0)
def named(v, table):
    m = re.match(r"\((\d+)\)(?: (.*))?", v)
    if m.group(2): table[m.group(1)] = m.group(2)
    return table[m.group(1)]
for line in open(path):
    line = line.rstrip("\n")
    if not line: continue
    if line.startswith("ob="): ob = named(line[3:], obnames); continue
    if line.startswith("fn="): fn = named(line[3:], fnnames); continue
    if line.startswith(("cob=", "cfn=", "cfi=", "cfl=")):
        if line.startswith("cob="): named(line[4:], obnames)
        if line.startswith("cfn="): named(line[4:], fnnames)
        continue
    if line.startswith("calls="): skip_next = True; continue
    if not (line[0].isdigit() or line[0] in "+-*" or line.startswith("0x")): continue
    parts = line.split()
    addr = pos(parts[0], addr)
    if skip_next: skip_next = False; continue
    if len(parts) >= 3:
        counts[ob][addr] += int(parts[2]); fnof[(ob, addr)] = fn
def disassembly(obj):
    """objdump's lines of `obj` (demangled), and the line index of each address."""
    lines = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", obj],
                           capture_output=True, text=True).stdout.splitlines()
    at = {}
    for i, l in enumerate(lines):
        mm = re.match(r"\s*([0-9a-f]+):\s+(.*)", l)
        if mm: at[int(mm.group(1), 16)] = i
    return lines, at
def is_locked(line):
    ins = line.split(":", 1)[1].strip()
    return ins.startswith("lock ") or (ins.startswith("xchg") and "(" in ins)
total = 0
byfn = defaultdict(int)
dis = {o: disassembly(o) for o in counts if o.startswith("/")}
for o, (lines, at) in dis.items():
    for a, c in counts[o].items():
        if a in at and is_locked(lines[at[a]]):
            total += c; byfn[fnof[(o, a)]] += c
print(f"locked instructions per request: {total / N:.1f}")
for f, c in sorted(byfn.items(), key=lambda x: -x[1])[:top]:
    print(f"{c / N:7.2f}  {f[:140]}")
if len(sys.argv) > 4:
    want = sys.argv[4]
    for o, (lines, at) in dis.items():
        for a, c in sorted(counts[o].items()):
            f = fnof[(o, a)]
            if want in f and a in at and is_locked(lines[at[a]]):
                i = at[a]
                ctx = [x for x in lines[i-12:i+6] if "call" in x or "lock" in x or "xchg" in x]
                print(f"--- {c/N:.2f} at {a:#x} in {f[:60]}")
                for x in ctx: print("   ", x.strip()[:160])
