"""Rebuild ``plots_template/index.html``: DVC's plots page with vega, vega-lite and vega-embed inlined.

``dvc plots show`` fills an HTML template (``plots.html_template`` in ``.dvc/config``). Its default page
loads the three libraries from a CDN, so with no network every vega plot is blank. This template has no
``{scripts}`` placeholder (so DVC injects no CDN tags) and carries the libraries inline, which keeps the
generated ``dvc_plots/index.html`` self-contained wherever ``-o`` puts it.

The committed ``index.html`` is what DVC reads; this script only matters when upgrading the libraries:

    python plots_template/build.py            # npm pack of the pinned versions below, then rebuild
    python plots_template/build.py --from DIR # use tarballs already in DIR (vega-5.20.2.tgz, ...)

The versions are the ones DVC's own renderer pins (``dvc_render.vega.VegaRenderer.SCRIPTS``), so the
specs DVC generates are drawn by the library versions they were written for. Output is deterministic:
the same tarballs give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (npm package, version, file inside the package); order matters: vega-embed needs the other two.
LIBRARIES: tuple[tuple[str, str, str], ...] = (
    ("vega", "5.20.2", "package/build/vega.min.js"),
    ("vega-lite", "5.2.0", "package/build/vega-lite.min.js"),
    ("vega-embed", "6.18.2", "package/build/vega-embed.min.js"),
)
# DVC replaces these literally (dvc_render.html.HTML.embed); a library containing one would be corrupted.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- posescene: vega/vega-lite/vega-embed inlined so that plots draw with no network.
         Built by plots_template/build.py; licences in plots_template/licenses/.
{manifest}
    -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


class VendorError(RuntimeError):
    """A tarball is missing or a library cannot be inlined safely."""


def _npm_pack(dest: Path) -> None:
    specs = [f"{name}@{version}" for name, version, _ in LIBRARIES]
    subprocess.run(["npm", "pack", "--silent", *specs], cwd=dest, check=True, stdout=subprocess.DEVNULL)


def _read_member(tarball: Path, member: str) -> bytes:
    with tarfile.open(tarball) as archive:
        handle = archive.extractfile(member)
        if handle is None:
            raise VendorError(f"{tarball}: {member} is not a regular file")
        return handle.read()


def build(tarballs: Path, out: Path) -> None:
    """Write ``out/index.html`` and ``out/licenses/<package>-LICENSE`` from the npm tarballs in ``tarballs``."""
    manifest: list[str] = []
    scripts: list[str] = []
    licenses = out / "licenses"
    licenses.mkdir(parents=True, exist_ok=True)
    for name, version, member in LIBRARIES:
        tarball = tarballs / f"{name}-{version}.tgz"
        if not tarball.is_file():
            raise VendorError(f"{tarball}: not found. Run without --from to npm pack {name}@{version}.")
        code = _read_member(tarball, member).decode("utf-8")
        # An inline <script> ends at the first "</script"; a DVC placeholder would be replaced inside the code.
        found = [bad for bad in PLACEHOLDERS if bad in code]
        if "</script" in code.lower():
            found.append("</script")
        for bad in found:
            raise VendorError(f"{name}@{version} {member} contains {bad!r}; it cannot be inlined as is")
        digest = hashlib.sha256(code.encode("utf-8")).hexdigest()
        manifest.append(f"         {name}@{version} {member.removeprefix('package/')} sha256:{digest} (BSD-3-Clause)")
        scripts.append(f'    <script type="text/javascript">/* {name}@{version} */\n{code}\n    </script>')
        (licenses / f"{name}-LICENSE").write_bytes(_read_member(tarball, "package/LICENSE"))
    html = PAGE.format(manifest="\n".join(manifest), scripts="\n".join(scripts))
    (out / "index.html").write_text(html, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="directory holding the npm tarballs")
    args = parser.parse_args()
    if args.source is not None:
        build(args.source, HERE)
        return
    with tempfile.TemporaryDirectory() as tmp:
        _npm_pack(Path(tmp))
        build(Path(tmp), HERE)


if __name__ == "__main__":
    main()
