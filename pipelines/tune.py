"""Ray Job entry point for `raygbm tune` (same flags).

    ray job submit --working-dir . -- python -m pipelines.tune --config pipelines/configs/demo.yaml ...

Inside a submitted job ``RAY_ADDRESS`` is set, so the stage joins that cluster instead of starting one.
"""

from __future__ import annotations

import sys

from raygbm.cli import main as cli_main


def main(argv: list[str] | None = None) -> None:
    cli_main(["tune", *(sys.argv[1:] if argv is None else argv)], prog_name="python -m pipelines.tune")


if __name__ == "__main__":
    main()
