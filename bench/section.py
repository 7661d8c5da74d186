#!/usr/bin/env python3
"""Replaces one marked section of BENCHMARKS.md (`<!-- NAME:begin -->` to `<!-- NAME:end -->`)
with the text on stdin, which carries the markers itself; appends it when the file has none.

  echo "$section" | python3 bench/section.py gossip
"""
import os
import re
import sys

name = sys.argv[1]
section = sys.stdin.read().strip()
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "BENCHMARKS.md")
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
if not (section.startswith(begin) and section.endswith(end)):
    sys.exit(f"section.py: the text for {name} must start with {begin} and end with {end}")
if begin in text:
    text = re.sub(re.escape(begin) + ".*" + re.escape(end), lambda _: section, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n" + section + "\n"
open(path, "w").write(text)
