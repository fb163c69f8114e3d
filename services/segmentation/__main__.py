"""python -m services.segmentation run | migrate | import-orders ..."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "import-orders":
        from services.segmentation.entrypoints.importer import main as import_main

        raise SystemExit(import_main(args[1:]))
    from services.segmentation.spec import SPEC
    from shared.cli import service_main

    service_main(SPEC, args)


if __name__ == "__main__":
    main()
