"""The Gradio layer: three tabs wired to the plain functions of `sonify_tab`, `search_tab` and `draw_tab`.

Offline by construction: analytics off, system fonts only (the default theme would load Google Fonts),
Gradio's uploads and cache in the app's own temporary folder (`GRADIO_TEMP_DIR`, removed at exit).
Every handler turns an `AppError` (bad input, a run it cannot use) into one line in the tab's status.
"""

from __future__ import annotations

import html
import logging
import os
from urllib.parse import quote

from sonify.webapp import draw_tab, search_tab, sonify_tab
from sonify.webapp.runtime import AppError, AppRun

log = logging.getLogger("sonify.app")
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
CSS = """
.sonify-table {border-collapse: collapse; width: 100%; font-size: 0.9em}
.sonify-table td, .sonify-table th {border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: middle}
.sonify-table audio {height: 32px; width: 260px}
.status-error {color: #b00020; font-weight: 600}
"""


def offline_env(temp_dir: str) -> None:
    """Before gradio is imported: no analytics, its files in our temp folder."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def file_url(path: str) -> str:
    return "/gradio_api/file=" + quote(str(path))


def failure(e: Exception) -> str:
    """The status line for a handler's exception: an AppError as it says; anything else (a bug, a model
    failure) by its type and first line, with the traceback in the server's log only."""
    if isinstance(e, AppError):
        return status(str(e), True)
    log.error("unexpected error in a handler", exc_info=e)
    return status(f"unexpected error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (details in the server's log)", True)


def status(message: str, error: bool = False) -> str:
    text = html.escape(message)
    return f"<div class='{'status-error' if error else 'status-ok'}'>{text}</div>"


def _num(v, digits: int = 4) -> str:
    return "" if v is None or v != v else f"{v:.{digits}f}"


def sonify_html(result: sonify_tab.SonifyResult) -> str:
    head = ("<tr><th>concept</th><th>chunk</th><th>source / uri</th><th>cosine</th><th>score</th><th>threshold</th>"
            "<th>eligible</th><th>target LUFS</th><th>player</th></tr>")
    body = "".join(
        f"<tr class='match' data-chunk='{html.escape(r['chunk_id'])}' data-row='{r['row']}' data-eligible='{r['n_eligible']}'>"
        f"<td>{html.escape(r['text'])}</td><td><code>{html.escape(r['chunk_id'])}</code></td>"
        f"<td>{html.escape(r['source'])}/{html.escape(r['uri'])} @ {r['offset']:.1f} s</td>"
        f"<td>{_num(r['cosine'])}</td><td>{_num(r['score'])}</td><td>{_num(r['threshold'])}</td>"
        f"<td>{r['n_eligible']}{' (' + html.escape(r['fallback']) + ')' if r['fallback'] else ''}</td>"
        f"<td>{_num(r['target_lufs'], 1)}</td>"
        f"<td><audio controls preload='metadata' src='{file_url(r['audio'])}'></audio></td></tr>" for r in result.rows)
    return f"<table class='sonify-table' id='match-table'>{head}{body}</table>"


def search_html(page: search_tab.SearchPage) -> str:
    head = "<tr><th>#</th><th>chunk</th><th>source / uri</th><th>cosine</th><th>player</th></tr>"
    body = "".join(
        f"<tr class='hit' data-chunk='{html.escape(r['chunk_id'])}' data-row='{r['row']}'>"
        f"<td>{r['rank']}</td><td><code>{html.escape(r['chunk_id'])}</code></td>"
        f"<td>{html.escape(r['source'])}/{html.escape(r['uri'])} @ {r['offset']:.1f} s</td><td>{_num(r['cosine'])}</td>"
        f"<td><audio controls preload='metadata' src='{file_url(r['audio'])}'></audio></td></tr>" for r in page.rows)
    return (f"<div id='search-page' data-page='{page.page}' data-pages='{page.pages}'>page {page.page + 1} of {page.pages}</div>"
            f"<table class='sonify-table' id='search-table'>{head}{body}</table>")


def build(app: AppRun):
    """The Blocks of the app (not launched)."""
    import gradio as gr

    template, max_concepts = str(app.cfg.stages.concepts.text_template), int(app.conf.max_concepts)

    with gr.Blocks(title="sonify", analytics_enabled=False) as demo:
        gr.Markdown(f"## sonify: `{html.escape(str(app.run_dir))}`\n"
                    f"pool: {app.pool.shape[0]} chunks, CLAP {app.pool.shape[1]}-d; retrieval `{app.mode}` at k={app.k}; "
                    f"checkpoint: `{app.checkpoint or 'none (the draw tab is off)'}`")
        with gr.Tab("Sonify an image", id="sonify"):
            state = gr.State({"key": None, "variant": sonify_tab.TYPED, "texts": [], "draw": 0})
            with gr.Row():
                with gr.Column():
                    image_file = gr.File(label="Image (upload)", file_types=["image"], type="filepath", elem_id="image-upload")
                    preview = gr.Image(label="as decoded", interactive=False, height=220)
                with gr.Column():
                    vlm = gr.Dropdown(app.vlm_names, value=(app.vlm_names or [None])[0], label="VLM (needs the model; "
                                      "slow without a GPU)", interactive=bool(app.vlm_names))
                    ask = gr.Button("Ask the VLM for caption and concepts", interactive=bool(app.vlm_names))
                    caption = gr.Textbox(label="caption", interactive=True)
                    concepts = gr.Textbox(label=f"concepts, one a line (editable; at most {max_concepts})", lines=4,
                                          elem_id="concepts")
                    with gr.Row():
                        go = gr.Button("Sonify", variant="primary", elem_id="sonify-button")
                        again = gr.Button("Draw again", elem_id="draw-again")
                        send = gr.Button("Use these chunks in Draw", elem_id="send-to-draw",
                                         interactive=app.checkpoint is not None)
            sonify_status = gr.HTML(elem_id="sonify-status")
            mix_audio = gr.Audio(label="mixture (the mix stage's LUFS rule and renderer)", type="filepath",
                                 interactive=False, elem_id="mixture")
            matches = gr.HTML(elem_id="matches")

            def on_image(path):
                try:
                    up = sonify_tab.decode_image(app, path)
                except Exception as e:
                    return None, failure(e)
                return up.image, status(f"image decoded ({up.image.size[0]}x{up.image.size[1]}); ask the VLM or type concepts")

            def on_ask(path, name):
                try:
                    up = sonify_tab.decode_image(app, path)
                    cap, lines = sonify_tab.ask_vlm(app, up, name)
                except Exception as e:
                    return gr.update(), gr.update(), failure(e)
                return cap, "\n".join(lines), status(f"{name}: {len(lines)} concepts (edit them, then Sonify)")

            def run(path, text, st, again_pressed):
                try:
                    texts = sonify_tab.parse_typed(text, template, max_concepts)
                    key = sonify_tab.decode_image(app, path).key if path else sonify_tab.typed_key(texts)
                    same = st["key"] == key and st["texts"] == texts
                    d = st["draw"] + 1 if (again_pressed and same) else 0
                    res = sonify_tab.sonify(app, texts, key, sonify_tab.TYPED, d)
                except Exception as e:
                    return st, failure(e), None, ""
                st = {"key": key, "variant": sonify_tab.TYPED, "texts": texts, "draw": d,
                      "chunks": [r["chunk_id"] for r in res.rows]}
                lufs = f"{res.mixture_lufs:.1f} LUFS" if res.mixture_lufs is not None else "none"
                msg = f"draw {d}: {len(res.rows)} concepts matched (Algorithm 1, {app.mode}, k={app.k}); mixture {lufs}"
                return st, status("; ".join([msg, *res.notes])), res.mixture, sonify_html(res)

            image_file.change(on_image, image_file, [preview, sonify_status])
            ask.click(on_ask, [image_file, vlm], [caption, concepts, sonify_status])
            go.click(lambda p, t, s: run(p, t, s, False), [image_file, concepts, state], [state, sonify_status, mix_audio, matches])
            again.click(lambda p, t, s: run(p, t, s, True), [image_file, concepts, state], [state, sonify_status, mix_audio, matches])

        with gr.Tab("Search the pool", id="search"):
            with gr.Row():
                query = gr.Textbox(label="text", placeholder="rain on a tin roof", elem_id="search-query", scale=4)
                page = gr.Number(value=1, precision=0, minimum=1, label="page", elem_id="search-page-number", scale=1)
            with gr.Row():
                find = gr.Button("Search", variant="primary", elem_id="search-button")
                prev_b = gr.Button("Previous page", elem_id="search-prev")
                next_b = gr.Button("Next page", elem_id="search-next")
            search_status = gr.HTML(elem_id="search-status")
            hits = gr.HTML(elem_id="hits")

            def do_search(q, p, step):
                p = max(1, int(p or 1) + step)
                try:
                    res = search_tab.search(app, q, p - 1)
                except Exception as e:
                    return gr.update(), failure(e), ""
                return res.page + 1, status(f"{len(res.rows)} chunks for {res.query!r}"), search_html(res)

            for button, step in ((find, 0), (prev_b, -1), (next_b, 1)):
                button.click(lambda q, p, s=step: do_search(q, p, s), [query, page], [page, search_status, hits])
            query.submit(lambda q: do_search(q, 1, 0), query, [page, search_status, hits])

        with gr.Tab("Draw from sound", id="draw"):
            if app.checkpoint is None:
                gr.Markdown("No checkpoint: start the app with `checkpoint=<DiT training output>` to draw images from sound.",
                            elem_id="draw-off")
            slots = []
            for i in range(app.conf.max_draw_inputs):
                with gr.Row():
                    audio = gr.Audio(sources=["upload", "microphone"], type="filepath", format=None,
                                     label=f"input {i + 1}", elem_id=f"draw-audio-{i}", scale=3)
                    chunk = gr.Textbox(label="or a pool chunk id", elem_id=f"draw-chunk-{i}", scale=2)
                    offset = gr.Slider(-24, 12, value=0, step=0.5, label="loudness offset (dB)", elem_id=f"draw-offset-{i}", scale=2)
                slots += [audio, chunk, offset]
            with gr.Row():
                sequential = gr.Checkbox(label="sequential (one after another) instead of superposed", elem_id="draw-sequential")
                guidance = gr.Slider(1, 12, value=4.5, step=0.5, label="guidance", elem_id="draw-guidance")
                steps = gr.Slider(1, 50, value=20, step=1, label="steps", elem_id="draw-steps")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="draw-seed")
            draw_b = gr.Button("Draw", variant="primary", elem_id="draw-button", interactive=app.checkpoint is not None)
            draw_status = gr.HTML(elem_id="draw-status")
            heard = gr.Audio(label="the clip the model heard", type="filepath", interactive=False, elem_id="heard")
            gallery = gr.Gallery(label="images", elem_id="drawn", columns=4, height=320, object_fit="contain", format="png")

            def do_draw(*values):
                *slot_values, seq, g, n_steps, s = values
                inputs = [draw_tab.DrawInput(slot_values[j], slot_values[j + 1], float(slot_values[j + 2] or 0))
                          for j in range(0, len(slot_values), 3)]
                try:
                    d = draw_tab.draw(app, inputs, bool(seq), float(g), int(n_steps), int(s or 0))
                except Exception as e:
                    return failure(e), None, None
                return status(f"{len(d.images)} image(s), {d.size[0]}x{d.size[1]}"), d.mixture, d.images

            draw_b.click(do_draw, [*slots, sequential, guidance, steps, seed], [draw_status, heard, gallery])
            chunk_boxes = slots[1::3]
            send.click(lambda st: [(st.get("chunks") or [])[i] if i < len(st.get("chunks") or []) else ""
                                   for i in range(len(chunk_boxes))], state, chunk_boxes)
    return demo


def theme():
    import gradio as gr

    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO)


def launch(app: AppRun, host: str, port: int | None, block: bool = True):
    """Serve the app; returns (Blocks, URL). With `block`, serves until interrupted."""
    demo = build(app)
    demo.queue(default_concurrency_limit=1)   # one model call at a time: the models are shared
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=False,
                            allowed_paths=[str(app.temp.dir)], max_file_size=int(app.conf.max_upload_mb * 1e6),
                            theme=theme(), css=CSS, footer_links=[], ssr_mode=False, pwa=False, mcp_server=False,
                            enable_monitoring=False)
    app.load_in_background()   # the page is up: now the models (most of the startup)
    if block:
        print(f"sonify.app: serving {app.run_dir} at {url} (temporary files in {app.temp.dir}, removed at exit)", flush=True)
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo, url
