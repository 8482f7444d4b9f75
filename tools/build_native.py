"""Compile the request path's modules (stockade.native.COMPILED) with mypyc into src/stockade/_native/.

    .venv/bin/python tools/build_native.py              # build
    .venv/bin/python tools/build_native.py --if-stale   # nothing to do when the build matches the sources

The build goes to a temporary directory next to the target and replaces the old one only when it is complete,
with a manifest of the SHA-256 of every source file of the package, taken before compiling and checked again
after: a file that changed during the build fails it, and one edited later makes the manifest disagree, so that
build is not used (stockade.native.activate() checks it at every start). `make install` runs it with
--if-stale. Exit status 0 when the build is in place, 1 when it failed (the gateway then runs pure Python).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(SRC))
    from stockade import native

    if "--if-stale" in argv and native.stale() is None:
        return 0
    sources = native.fingerprint()
    paths = [str(native.source_path(m).relative_to(SRC)) for m in native.COMPILED]
    target = native.BUILD_DIR
    work = Path(tempfile.mkdtemp(prefix=".native-", dir=target.parent))
    report = io.StringIO()
    try:
        from mypyc.build import mypycify
        from setuptools import setup

        os.chdir(SRC)  # mypyc names modules by their path from here
        # mypyc's notes on constructs it compiles generically: shown only on failure
        with contextlib.redirect_stdout(report):
            extensions = mypycify(
                [f"--cache-dir={work / 'cache'}", *paths], group_name=native.GROUP, target_dir=str(work / "c")
            )
        setup(
            name="stockade-native",
            ext_modules=extensions,
            script_args=["--quiet", "build_ext", "--build-lib", str(work / "lib"), "--build-temp", str(work / "tmp")],
        )
        lib = work / "lib"
        if native.fingerprint() != sources:  # compiled from files that changed under it (a branch switched, a save)
            raise RuntimeError("sources changed during the build; run it again")
        (lib / native.MANIFEST).write_text(
            json.dumps({"interpreter": native.interpreter(), "sources": sources}, indent=1) + "\n"
        )
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        lib.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except (Exception, SystemExit) as exc:  # any failure leaves the pure-Python modules in charge
        print(report.getvalue(), end="", file=sys.stderr)
        print(f"build_native: compiling failed, the gateway runs pure Python: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"build_native: {len(paths)} modules compiled into {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
