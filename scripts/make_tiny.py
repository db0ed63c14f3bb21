"""Build what `recipes/tiny.yaml` points to: a KJV tokenizer, a tiny Llama teacher base (h128, 4 layers),
a smaller student base (h64, 2 layers, 2 heads) sharing the tokenizer, and 32 training windows of 100 tokens.

    .venv/bin/python scripts/make_tiny.py [--out runs/tiny]
"""

import argparse
from pathlib import Path

from evalmem.tiny import build_model, kjv_verses, token_windows, train_tokenizer, write_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/tiny")
    parser.add_argument("--windows", type=int, default=32)
    args = parser.parse_args()
    out = Path(args.out)
    verses = kjv_verses()
    tokenizer = train_tokenizer(verses[:5000], out / "tokenizer", vocab_size=2048)
    build_model(out / "teacher-base", tokenizer, hidden=128, layers=4)
    build_model(out / "student-base", tokenizer, hidden=64, layers=2, heads=2, seed=1)  # vLLM CPU: head_dim >= 32
    windows = token_windows(verses[:3000], tokenizer, 100)[: args.windows]
    write_jsonl(out / "windows.jsonl", [{"id": f"w{i}", "input_ids": w} for i, w in enumerate(windows)])
    print(f"built {out}: tokenizer, teacher-base, student-base, windows.jsonl ({len(windows)} windows)")


if __name__ == "__main__":
    main()
