"""`python -m sonify.app`: a browser app over a built run (Gradio). One module per tab, each plain functions
(`sonify_tab`, `search_tab`, `draw_tab`) over `runtime.AppRun`; `ui` only wires them into Gradio."""
