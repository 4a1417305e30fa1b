#!/usr/bin/env bash
# Rebuild .dvc/plots/page.html: DVC's plots page with vega, vega-lite and vega-embed inlined, so that
# `dvc plots show` / `dvc plots diff` draw with no network (DVC's default page loads them from a CDN).
# Needs npm and the npm registry (only when run, not at `dvc plots show` time). Usage: scripts/build_plots_page.sh
set -euo pipefail
VERSIONS=(vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0)  # the majors DVC's own page loads
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "${VERSIONS[@]}" >/dev/null)
for tgz in "$work"/*.tgz; do mkdir -p "${tgz%.tgz}" && tar xzf "$tgz" -C "${tgz%.tgz}"; done
python3 - "$work" "$root/.dvc/plots/page.html" "${VERSIONS[*]}" <<'PY'
import pathlib, re, sys
work, out, versions = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
scripts = []
for name in ("vega", "vega-lite", "vega-embed"):
    [js] = work.glob(f"{name}-[0-9]*/package/build/{name}.min.js")
    text = re.sub(r"//# sourceMappingURL=\S+\s*$", "", js.read_text(encoding="utf-8"))
    assert "</script" not in text and "{plot_divs}" not in text
    scripts.append(f"<script>/* {js.parent.parent.parent.name} */\n{text}\n</script>")
page = f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC Plot</title>
<!-- palbert's page for `dvc plots show` (.dvc/config: plots.html_template), built by scripts/build_plots_page.sh.
     {versions} are inlined so that the page draws with no network. They are BSD-3-Clause,
     Copyright (c) 2015, University of Washington Interactive Data Lab; the bundled parts' licences are in
     .dvc/plots/THIRD_PARTY_LICENSES.md. -->
{chr(10).join(scripts)}
<style>
  table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""
out.write_text(page, encoding="utf-8")
print(f"{out}: {len(page) // 1024} KiB")
PY
