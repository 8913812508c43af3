"""``python -m crdref``: regenerate the ClientCredential reference in docs/reference.md."""

from __future__ import annotations

import crdref

if __name__ == "__main__":
    changed = crdref.update()
    print(f"{crdref.REFERENCE_PATH}: {'updated' if changed else 'already current'}")
