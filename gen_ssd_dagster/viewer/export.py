"""One partition's trajectories as a self-contained HTML file (for people without the server,
and as an MLflow artifact): the list, the distributions and each trajectory's steps, inline."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

from ..store import Home
from .app import TEMPLATES
from .plots import distributions_png
from .queries import Filters, Reader

EXPORT_LIMIT = 200  # trajectories written out in full; the server shows every one


def export_partition(home: Home, dataset: str, out: Path, config_hash: str = "", teacher_version: str = "",
                     limit: int = EXPORT_LIMIT, method_version: str = "") -> Path:
    """Write `out` (whole, then moved into place) and return it; `config_hash`, `teacher_version`
    and `method_version` narrow the partition to one materialization's work."""
    reader = Reader(home)
    filters = Filters(dataset=dataset, config_hash=config_hash, teacher_version=teacher_version,
                      method_version=method_version)
    with reader.session():
        total = reader.count(filters)
        details = [(reader.trajectory(key), reader.steps(key)) for key in reader.latest_keys(filters, limit)]
        distributions = reader.distributions(filters)
    html = TEMPLATES.get_template("export.html").render(
        root="#", home=str(home.root), link=lambda key: f"#t-{key}", dataset=dataset, total=total,
        items=[t for t, _ in details], details=details,
        plot=base64.b64encode(distributions_png(distributions)).decode(),
        exported=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(html, encoding="utf-8")
    partial.replace(out)
    return out
