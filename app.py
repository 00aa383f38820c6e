"""camloc app: `streamlit run app.py` (or `make demo`). Pages live in app_pages/, logic in camloc/.

Not in a folder named `pages/`: Streamlit takes every module of a `pages/` folder beside the entry point for a
legacy multipage app until a session has run `st.navigation`, so a fresh server's first visitor on a bookmark
(`/compare`) got that page's module run on its own, without this file, under a sidebar of all 23 modules."""

import os

# PyTorch's OpenMP threads spin while they wait. When another process holds a core (a second user, the
# browser, a test run) every spinning barrier stalls: on 2 cores with one busy neighbour, a TTA-CAM
# pass measured 8.3 s with spinning threads and 1.0 s with sleeping ones. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st

st.set_page_config(page_title="camloc", page_icon="🔥", layout="wide")
navigation = st.navigation([
    st.Page("app_pages/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("app_pages/all_classes.py", title="All classes", icon=":material/palette:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("app_pages/pr_curves.py", title="PR curves", icon=":material/show_chart:"),
    st.Page("app_pages/training_runs.py", title="Training runs", icon=":material/monitoring:"),
    st.Page("app_pages/dataset.py", title="Dataset browser", icon=":material/photo_library:"),
])
navigation.run()
