"""Strip outputs and execution counts from notebooks (what git keeps), or check that none are left.

    python3 notebooks/strip_outputs.py                 # strip every notebooks/*.ipynb in place
    python3 notebooks/strip_outputs.py --check a.ipynb # exit 1 naming each notebook that still has outputs

Only code cells' "outputs", "execution_count" and execution-timing metadata change; everything else,
including the JSON layout Jupyter writes (indent 1), stays as it was.
"""
from __future__ import annotations

import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def leftovers(nb: dict) -> list[str]:
    """What in a notebook is not stripped: ["cell 3: 2 outputs", "cell 3: execution_count 7", ...]."""
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        if cell.get("outputs"):
            out.append(f"cell {i}: {len(cell['outputs'])} outputs")
        if cell.get("execution_count") is not None:
            out.append(f"cell {i}: execution_count {cell['execution_count']}")
        if "execution" in cell.get("metadata", {}):
            out.append(f"cell {i}: execution metadata")
    return out


def strip(nb: dict) -> dict:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            cell.get("metadata", {}).pop("execution", None)
    return nb


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"] or sorted(glob.glob(os.path.join(HERE, "*.ipynb")))
    bad = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
        left = leftovers(nb)
        if check:
            if left:
                bad += 1
                print(f"{path}: not stripped ({'; '.join(left[:3])}); run python3 notebooks/strip_outputs.py")
        elif left:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(strip(nb), f, indent=1, ensure_ascii=False)
                f.write("\n")
            os.replace(tmp, path)
            print(f"stripped {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
