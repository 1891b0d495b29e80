"""Run the two workflows as separate processes, then print the cross-workflow chain.

    python examples/two_workflows/run.py [WORKDIR]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUERY = HERE.parent.parent / "queries" / "lineage_chain.rq"


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="provgraph-demo-"))
    env = dict(os.environ)
    env.setdefault("PROVGRAPH_DATA_DIR", str(work / ".provgraph"))
    site1, site2 = work / "instrument", work / "cluster"
    subprocess.run([sys.executable, str(HERE / "acquire.py"), str(site1)], check=True, env=env)
    site2.mkdir(parents=True, exist_ok=True)
    shutil.copy(site1 / "a.bin", site2 / "raw-copy.bin")  # same bytes, another path
    subprocess.run([sys.executable, str(HERE / "analyze.py"), str(site2 / "raw-copy.bin")], check=True, env=env)

    import pyoxigraph as ox

    import provgraph

    settings = provgraph.load_settings(data_dir=env["PROVGRAPH_DATA_DIR"])
    store = provgraph.Store(settings.store_dir)
    target = str((site2 / "b.bin").resolve())
    rows = list(store.query(QUERY.read_text(), substitutions={"path": ox.Literal(target)}))
    print(f"\nlineage of {target}:")
    for row in rows:
        path = row["generatedPath"].value if row["generatedPath"] else "?"
        print(f"  {row['workflow'].value:>8} / {row['taskLabel'].value:<8} generated {path}")
        print(f"           artifact {row['artifact'].value}")
    workflows = {row["workflow"].value for row in rows}
    print(f"\n{len(rows)} steps across workflows: {sorted(workflows)}")
    return 0 if workflows == {"acquire", "analyze"} else 1


if __name__ == "__main__":
    sys.exit(main())
