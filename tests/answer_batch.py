"""A stand-in for vLLM's `run_batch` in tests: answer a batch input file into an output file.

    python tests/answer_batch.py -i requests.jsonl -o results.jsonl [--fail-after N]

Reads OpenAI batch request lines and writes vLLM-style result lines (`{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}`) with the scripted model of
batch_server.py. `--fail-after N` writes N results, then exits with status 3 (a crashed runner); `--count FILE`
appends a line per run; `--wait-for FILE` waits for that file before answering.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from batch_server import chat_completion


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--input-file", required=True)
    parser.add_argument("-o", "--output-file", required=True)
    parser.add_argument("--fail-after", type=int, default=None)
    parser.add_argument("--count", type=Path, default=None, help="append a line to this file per run")
    parser.add_argument("--wait-for", type=Path, default=None, help="start answering once this file exists")
    args = parser.parse_args()
    if args.count:
        with args.count.open("a") as fh:
            fh.write(f"{args.input_file}\n")
    while args.wait_for and not args.wait_for.exists():
        time.sleep(0.02)
    with open(args.input_file, encoding="utf-8") as src, open(args.output_file, "w", encoding="utf-8") as out:
        for n, text in enumerate(line for line in src if line.strip()):
            if args.fail_after is not None and n >= args.fail_after:
                print("simulated crash of the batch runner", file=sys.stderr)
                return 3
            request = json.loads(text)
            result = {"id": f"vllm-{uuid.uuid4().hex}", "custom_id": request["custom_id"],
                      "response": {"status_code": 200, "request_id": f"vllm-batch-{uuid.uuid4().hex}",
                                   "body": chat_completion(request["body"])},
                      "error": None}
            out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
