"""camloc app: `streamlit run app.py` (or `make demo`). Pages live in pages/, logic in camloc/."""

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
