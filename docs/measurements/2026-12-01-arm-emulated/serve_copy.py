"""A servable copy of PACKAGE whose fidelity set is its first QUERIES queries and PASSAGES
passages, the manifest's sha256 of fidelity.npz updated to match (tei-serve checks every file),
its graphs links to the original's. Under TCG re-validating fp32 on the full set takes hours.

    .venv/bin/python docs/measurements/2026-12-01-arm-emulated/serve_copy.py \
        /tmp/arm/pkg /tmp/arm/pkg-serve 12 2
"""

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from emulate_selection import small_copy

from tei_ort.package import FileDigest, read_manifest, write_manifest

src, dst, queries, passages = Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:5])
package = small_copy(src, dst, queries, passages)
for name in ("manifest.json", "checks.json"):
    (package / name).unlink(missing_ok=True)
manifest = read_manifest(src)
data = (package / "fidelity.npz").read_bytes()
digest = FileDigest(hashlib.sha256(data).hexdigest(), len(data))
write_manifest(package, replace(manifest, files={**manifest.files, "fidelity.npz": digest}))
print(package)
