#!/usr/bin/env python3
"""Instructions per request from a callgrind profile: by object and by function (self cost),
and inclusive cost of the functions matching a pattern. callgrind_annotate 3.19 folds a
profile zeroed mid-run (callgrind_control -z) into __libc_start_main; this reads the file's
cost lines itself.

Usage: callgrind-summary.py CALLGRIND.OUT REQUESTS [TOP] [INCLUSIVE_REGEX]"""
import collections
import re
import sys

path, nreq = sys.argv[1], float(sys.argv[2])
top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
pattern = sys.argv[4] if len(sys.argv) > 4 else None

names = {"fn": {}, "ob": {}, "fl": {}}
self_cost = collections.Counter()
by_object = collections.Counter()
call_cost = collections.Counter()  # (caller, callee) -> inclusive cost of the calls
object_of = {}
fn = ob = cfn = None
after_calls = False


def resolve(kind, value):
    """Callgrind's name compression: "(id) name" defines an id, "(id)" refers to it."""
    m = re.match(r"\((\d+)\)(?: (.*))?", value)
    if not m:
        return value
    i, name = m.groups()
    if name:
        names[kind][i] = name
    return names[kind].get(i, i)


# Position columns before the cost: 1 ("line"), 2 with --dump-instr=yes ("instr line").
npos = 1
for line in open(path):
    line = line.rstrip("\n")
    if line.startswith("positions:"):
        npos = len(line.split()) - 1
        continue
    key, _, value = line.partition("=")
    if key == "ob":
        ob = resolve("ob", value)
    elif key == "fn":
        fn = resolve("fn", value)
        object_of[fn] = ob
    elif key == "cob":
        resolve("ob", value)
    elif key == "cfn":
        cfn = resolve("fn", value)
    elif key in ("fl", "fi", "fe", "cfi", "cfl"):
        resolve("fl", value)
    elif key == "calls":
        after_calls = True
    elif line and (line[0].isdigit() or line[0] in "+-*"):
        parts = line.split()
        if len(parts) < npos + 1:
            continue
        cost = int(parts[npos])
        if after_calls:
            # The line after calls= is the inclusive cost of those calls.
            after_calls = False
            if cfn != fn:
                call_cost[(fn, cfn)] += cost
        else:
            self_cost[fn] += cost
            by_object[ob] += cost

total = sum(self_cost.values())
print("total: %d instructions, %.0f per request" % (total, total / nreq))
print("by object (instructions per request, share):")
for o, c in by_object.most_common(8):
    print("  %8.0f  %5.1f%%  %s" % (c / nreq, 100 * c / total, o))
print("by function, self (instructions per request, share):")
for f, c in self_cost.most_common(top):
    print("  %8.0f  %5.1f%%  %-72s %s" % (c / nreq, 100 * c / total, f[:72], (object_of.get(f) or "").rsplit("/", 1)[-1]))
if pattern:
    inclusive = collections.Counter(self_cost)
    for (caller, _), c in call_cost.items():
        inclusive[caller] += c
    print("inclusive, functions matching %r (instructions per request):" % pattern)
    for f, c in inclusive.most_common():
        if re.search(pattern, f) and c / nreq >= 20:
            print("  %8.0f  %s" % (c / nreq, f[:100]))
