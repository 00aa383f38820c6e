"""camloc app: `streamlit run app.py` (or `make demo`). Pages live in pages/, logic in camloc/."""

import os

# PyTorch's OpenMP threads spin while they wait. When another process holds a core (a second user, the
# browser, a test run) every spinning barrier stalls: on 2 cores with one busy neighbour, a TTA-CAM
# pass measured 8.3 s with spinning threads and 1.0 s with sleeping ones. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st

st.set_page_config(page_title="camloc", page_icon="🔥", layout="wide")
navigation = st.navigation([
    st.Page("pages/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("pages/all_classes.py", title="All classes", icon=":material/palette:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/pr_curves.py", title="PR curves", icon=":material/show_chart:"),
    st.Page("pages/training_runs.py", title="Training runs", icon=":material/monitoring:"),
    st.Page("pages/dataset.py", title="Dataset browser", icon=":material/photo_library:"),
])
navigation.run()
