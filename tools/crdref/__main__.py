"""``python -m crdref`` (``make docs``): regenerate the documentation generated from the code.

The ClientCredential reference in docs/reference.md (from the CRD) and README's table of
Ready reasons (from operator/tokensync/failures.py).
"""

from __future__ import annotations

import crdref
from crdref import reasons

if __name__ == "__main__":
    for path, changed in (
        (crdref.REFERENCE_PATH, crdref.update()),
        (reasons.README_PATH, reasons.update()),
    ):
        print(f"{path}: {'updated' if changed else 'already current'}")
