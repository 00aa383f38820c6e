"""camloc app entry point: `streamlit run app.py` (or `make demo`)."""

import streamlit as st

st.set_page_config(page_title="camloc", page_icon="🔥", layout="wide")
st.title("camloc — class activation maps for object localisation")
st.info("The interactive explorer is on its way. Meanwhile use the library: "
        "`camloc.localize.Localizer.from_checkpoint(path).predict(image)`.")
