"""The fault campaign (issue 11): kills at many moments of a small run in every engine, each
kind of file of a finished run damaged in each way and read by every command, the settings
fuzz corpus, and crafted files that would run code. Writes benchmarks/results/reliability.md.

    python benchmarks/reliability.py [--kills 6] [--fuzz 3000] [--out FILE]

What counts:
- a kill: the run killed (SIGKILL to its whole process group, or SIGTERM) at a moment spread
  over its wall time, then resumed by the same command; it must finish (exit 0) with weights
  and masks byte-identical to a run that was never stopped;
- a damaged file: each command that reads the run (resume, report, export, lottery-pools,
  connectivity) must either refuse in one line (exit 2, "detected"), or finish with output
  identical to the undamaged run's ("tolerated": e.g. a deleted particle file, or a deleted
  start file that the resume recomputes identically). Output that differs is "silently wrong";
- any exception that escapes a command, or a "Traceback" in a killed run's output, is a
  traceback; a file that makes a marker appear is code executed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import machine_line, publish  # noqa: E402

ENGINES = {"sequential": ["--engine", "sequential"],
           "vectorised": ["--engine", "vectorised"],
           "processes": ["--processes", "2"]}
RUN = ["run", "--dataset", "synthetic", "--data-size", "2000", "--model", "mlp", "--epochs",
       "4", "--batch-size", "32", "--levels", "2", "--particles", "2", "--device", "cpu",
       "--lr", "0.05", "--rewind-epochs", "0.5", "--checkpoint-every", "15", "--threads", "1",
       "--quiet"]


def weights(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.glob("level_*/*.safetensors"))
            if not p.name.startswith("checkpoint_")} | \
        {n: (root / n).read_bytes() for n in ("init.safetensors", "rewind.safetensors")
         if (root / n).is_file()}


def swamp(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "swamp", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


# ---- kills -----------------------------------------------------------------------------
def kill_campaign(work: Path, kills: int, rng: random.Random) -> tuple[list[str], Counter]:
    rows, total = [], Counter()
    for engine, flags in ENGINES.items():
        ref = work / f"ref-{engine}"
        t0 = time.perf_counter()
        proc = swamp([*RUN, *flags, "--run-dir", str(ref)])
        _, err = proc.communicate(timeout=600)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"reference run ({engine}) failed: {err}")
        reference = weights(ref)
        c = Counter()
        for i in range(kills):
            how = signal.SIGTERM if i % 3 == 2 else signal.SIGKILL
            at = wall * (i + 0.5 + 0.4 * (rng.random() - 0.5)) / kills
            cut = work / f"cut-{engine}-{i}"
            proc = swamp([*RUN, *flags, "--run-dir", str(cut)])
            time.sleep(at)
            with contextlib.suppress(ProcessLookupError):
                if how == signal.SIGKILL:
                    os.killpg(proc.pid, signal.SIGKILL)     # the run and its workers
                else:
                    os.kill(proc.pid, signal.SIGTERM)       # as a scheduler stops a job
            _, err = proc.communicate(timeout=120)
            c["tried"] += 1
            c["traceback"] += "Traceback" in err
            resumed = swamp([*RUN, *flags, "--run-dir", str(cut)])
            _, err = resumed.communicate(timeout=600)
            c["traceback"] += "Traceback" in err
            if resumed.returncode == 0:
                c["resumed"] += 1
                c["identical"] += weights(cut) == reference
            shutil.rmtree(cut, ignore_errors=True)
        rows.append(f"| {engine} | {c['tried']} | {c['resumed']} | {c['identical']} | "
                    f"{c['traceback']} | {wall:.1f} s |")
        total.update(c)
        shutil.rmtree(ref, ignore_errors=True)
    return rows, total


# ---- damage ----------------------------------------------------------------------------
def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit(path: Path) -> bool:
    """A plausible hand edit that keeps the file well-formed; False where there is none."""
    if path.suffix == ".json":
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict) or not obj:
            return False
        key = sorted(obj)[0]
        if path.name == "settings.json":
            obj["train"]["momentum"] = 0.5
        elif path.name == "metrics.json":
            obj["test_acc"] = 0.999
        elif path.name == "checksums.json":
            obj[key] = "0" * 64
        else:
            obj[key] = {"edited": True}
        path.write_text(json.dumps(obj))
        return True
    if path.suffix == ".csv":
        lines = path.read_text().splitlines(keepends=True)
        path.write_text(lines[0] + lines[1].replace("0.", "0.9", 1) + "".join(lines[2:]))
        return True
    return False


DAMAGE = {"bit flip": _flip, "truncated": _truncate, "deleted": lambda p: p.unlink(),
          "hand edit": _edit}


def _commands(root: Path, out: Path) -> dict[str, list[str]]:
    return {"resume": [*RUN, *ENGINES["sequential"], "--run-dir", str(root)],
            "report": ["report", str(root), "--out", str(out / "report")],
            "export": ["export", str(root), "--out", str(out / "export.safetensors")],
            "lottery-pools": ["lottery-pools", str(root), "--out", str(out / "pools"),
                              "--grid", "0.5"],
            "connectivity": ["connectivity", str(root), "--points", "2",
                             "--out", str(out / "lmc")]}


OPTIONAL = ("particle_", "next_mask")   # files a run may lack (--no-save-particles, old runs)


def _same(name: str, got: object, expected: object) -> bool:
    """A resumed run must hold every level's mask and solution and the start files as the
    undamaged run did; optional files it holds must be identical too."""
    if name != "resume":
        return got == expected
    required = {k for k in expected if not any(o in k for o in OPTIONAL)}
    return required <= set(got) and all(expected.get(k) == v for k, v in got.items())


def _outputs(name: str, root: Path, out: Path) -> object:
    """What a command produced, for comparison with the undamaged run's."""
    if name == "resume":
        return weights(root)
    if name == "report":
        return (out / "report" / "summary.csv").read_bytes()
    if name == "export":
        return (out / "export.safetensors").read_bytes()
    if name == "lottery-pools":
        return {p.name: p.read_bytes() for p in sorted((out / "pools").glob("level_*/*.safetensors"))}
    return (out / "lmc" / "connectivity.csv").read_bytes()


def _call(argv: list[str]) -> tuple[int | str, str]:
    from swamp.app.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return main(argv), err.getvalue()
    except BaseException as exc:   # anything main lets out is a traceback for the user
        return f"escaped {type(exc).__name__}", err.getvalue()


def damage_campaign(work: Path) -> tuple[list[str], Counter, list[str]]:
    source = work / "finished"
    proc = swamp([*RUN, *ENGINES["sequential"], "--run-dir", str(source)])
    if proc.wait(timeout=600) != 0:
        raise SystemExit(f"the finished run failed: {proc.stderr.read()}")
    expected = {}
    ref_out = work / "ref-out"
    for name, argv in _commands(source, ref_out).items():
        rc, err = _call(argv)
        if rc != 0:
            raise SystemExit(f"{name} failed on the undamaged run: {err}")
        expected[name] = _outputs(name, source, ref_out)
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*")
                   if p.is_file() and p.name != "run.lock")
    counts, per_kind, wrong = Counter(), {}, []
    last = f"level_{max(int(p.name.split('_')[1]) for p in source.glob('level_*'))}/metrics.json"
    for rel in files:
        kind = rel.split("/")[-1]
        kind = "level_n/" + kind if rel.startswith("level_") else kind
        for how, damage in DAMAGE.items():
            for name in _commands(source, work).keys():
                # (the same folder name: outputs such as exports name the run by it)
                root, out = work / "case" / source.name, work / "case-out"
                shutil.rmtree(root, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(source, root)
                if damage(root / rel) is False:
                    break
                rc, err = _call(_commands(root, out)[name])
                c = per_kind.setdefault((kind, how), Counter())
                if isinstance(rc, str):
                    verdict = "traceback"
                    wrong.append(f"{rel} {how} -> {name}: {rc}")
                elif rc == 2 and err.count("\n") == 1:
                    verdict = "detected"
                elif rc == 0 and _same(name, _outputs(name, root, out), expected[name]):
                    verdict = "tolerated"
                elif rc == 0 and rel == last and how == "deleted":
                    # the state a stop just before the last level's record leaves: read as
                    # a run with that level unfinished; its resume recomputes it identically
                    verdict = "reads as unfinished"
                else:
                    verdict = "silently wrong" if rc == 0 else "unclear error"
                    wrong.append(f"{rel} {how} -> {name}: rc {rc}: {err.strip()[:160]}")
                c[verdict] += 1
                counts[verdict] += 1
    rows = []
    for (kind, how), c in sorted(per_kind.items()):
        rows.append(f"| {kind} | {how} | {c['detected']} | {c['tolerated']} | "
                    f"{c['reads as unfinished']} | {c['silently wrong'] + c['unclear error']} "
                    f"| {c['traceback']} |")
    return rows, counts, wrong


# ---- fuzz corpus and crafted files -----------------------------------------------------
def fuzz_campaign(n: int, rng: random.Random, work: Path) -> Counter:
    from swamp.config import SECTIONS, Settings, field_owners
    from swamp.errors import SwampError

    names = sorted(field_owners())
    values = [None, True, False, 0, -1, 1, 10**13, 1e-300, float("nan"), float("inf"), "",
              "x", "é", [1, 2], {"a": 1}, 0.5, "cuda:9", "../../etc"]
    c = Counter()
    for i in range(n):
        c["tried"] += 1
        suffix = rng.choice([".json", ".toml", ".yaml"])
        if rng.random() < 0.3:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        else:
            doc = {}
            for _ in range(rng.randrange(1, 6)):
                key = rng.choice(names + sorted(SECTIONS) + ["nonsense"])
                doc[key] = (rng.choice(values) if key not in SECTIONS
                            else {rng.choice(names): rng.choice(values)})
            raw = json.dumps(doc, default=str).encode()
        path = work / f"fuzz{suffix}"
        path.write_bytes(raw)
        try:
            Settings.from_file(path).resolved()
            c["accepted"] += 1
        except SwampError as exc:
            c["one line" if "\n" not in str(exc) else "several lines"] += 1
        except Exception:
            c["traceback"] += 1
    return c


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_campaign(work: Path) -> Counter:
    """Files crafted to run code when read; each must give one line and run nothing."""
    c = Counter()
    marker = work / "code-ran"
    cifar = work / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"):
        (cifar / name).write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}))
    yaml_file = work / "evil.yaml"
    yaml_file.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    cases = {"cifar batch (run)": ["run", "--dataset", "cifar10", "--data-dir",
                                   str(work / "cifar"), "--run-dir", str(work / "c1"), "--quiet"],
             "yaml tag (settings file)": ["run", "--config", str(yaml_file), "--run-dir",
                                          str(work / "c2"), "--quiet"]}
    for name, argv in cases.items():
        rc, err = _call(argv)
        c["tried"] += 1
        c["refused in one line"] += rc == 2 and err.count("\n") == 1
        c["traceback"] += isinstance(rc, str)
        c["code executed"] += marker.exists()
        marker.unlink(missing_ok=True)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=6, help="kills per engine")
    ap.add_argument("--fuzz", type=int, default=3000, help="fuzzed settings files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/reliability.md")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        kill_rows, kills = kill_campaign(work, args.kills, rng)
        damage_rows, damage, wrong = damage_campaign(work)
        fuzz = fuzz_campaign(args.fuzz, rng, work)
        crafted = crafted_campaign(work)
    minutes = (time.perf_counter() - t0) / 60
    command = (f"python benchmarks/reliability.py --kills {args.kills} --fuzz {args.fuzz} "
               f"--seed {args.seed}")
    tracebacks = kills["traceback"] + damage["traceback"] + fuzz["traceback"] + \
        crafted["traceback"]
    lines = [
        "# Fault campaign", "",
        f"Command: `{command}` ({minutes:.1f} min). {machine_line(load0, os.getloadavg())}",
        "",
        "## Summary", "",
        "| faults tried | runs resumed | results identical | damage detected | tolerated "
        "(identical output) | reads as unfinished | silently wrong | tracebacks | "
        "code executed |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {kills['tried'] + sum(damage.values()) + fuzz['tried'] + crafted['tried']} | "
        f"{kills['resumed']} of {kills['tried']} | {kills['identical']} of {kills['tried']} | "
        f"{damage['detected']} | {damage['tolerated']} | {damage['reads as unfinished']} | "
        f"{damage['silently wrong'] + damage['unclear error']} | {tracebacks} | "
        f"{crafted['code executed']} |", "",
        "Targets: every killed run resumes to identical results; silently wrong 0; "
        "tracebacks 0; code executed 0.", "",
        "## Kills (a third of them SIGTERM, the rest SIGKILL to the process group), then "
        "the same command again", "",
        "| engine | kills | resumed | identical weights and masks | tracebacks | "
        "uninterrupted run |", "|---|---|---|---|---|---|", *kill_rows, "",
        "## Damage: each file of a finished run (2 levels, 2 particles), each damage, read by "
        "resume, report, export, lottery-pools and connectivity", "",
        "| file | damage | detected (one line, exit 2) | tolerated (output identical) | "
        "reads as unfinished | wrong or unclear | tracebacks |", "|---|---|---|---|---|---|---|",
        *damage_rows, "",
        "Tolerated: the command finished with the undamaged run's output (a resume recomputes "
        "a deleted start file or level identically; a deleted particle file is optional; "
        "metrics.csv is a copy that no command reads for a run). Reads as unfinished: the "
        "last level's record deleted leaves exactly what a stop just before writing it "
        "leaves, so readers see that level as not finished and a resume recomputes it.", "",
        *(["Cases not detected and not identical:", "",
           *[f"- {w}" for w in wrong], ""] if wrong else []),
        "## Settings fuzz corpus and crafted files", "",
        f"- {fuzz['tried']} generated settings files (random bytes, and documents of random "
        f"setting names and values, as JSON, TOML or YAML): {fuzz['accepted']} accepted, "
        f"{fuzz['one line']} refused in one line, {fuzz['several lines']} refused in several "
        f"lines, {fuzz['traceback']} tracebacks.",
        f"- {crafted['tried']} files crafted to run a command when read (CIFAR batch files "
        f"whose pickle calls os.system; a YAML settings file with a python/object tag): "
        f"{crafted['refused in one line']} refused in one line, {crafted['traceback']} "
        f"tracebacks, {crafted['code executed']} ran code.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
