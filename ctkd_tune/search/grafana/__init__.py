"""The Grafana dashboard of ctkd-tune's per-trial Ray metrics (ctkd_trials.json); see docs/search.md (Grafana).

    python -c "from ctkd_tune.search.grafana import DASHBOARD; print(DASHBOARD)"    # where the JSON file is
"""

from pathlib import Path

DASHBOARD = Path(__file__).with_name("ctkd_trials.json")
