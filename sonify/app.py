"""Try a run in a browser: `python -m sonify.app run=<run> [checkpoint=<DiT output>] [--host H] [--port P]`.

A Gradio app with three tabs: sonify an image against the run's pool (Algorithm 1 at the run's k, the
mix stage's LUFS mixture), search the pool by text, and draw images from sounds with the checkpoint.
Offline (no analytics, no fonts or scripts from elsewhere); nothing is written into the run folder;
its temporary folder is removed when it stops. See docs/app.md.
"""

from __future__ import annotations

from sonify.engine.cli import command, command_parser, parse_command, positive_float, positive_int, run_of
from sonify.engine.runs import RUN_KEYS

import signal
import sys


def _interrupt(*_):
    raise KeyboardInterrupt


@command
def main(argv: list[str] | None = None) -> int:
    from sonify.webapp.runtime import AppConf, AppError, TempFiles

    d = AppConf()
    p = command_parser("app", __doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--max-upload-mb", type=positive_float, default=d.max_upload_mb, help="uploads over this are refused")
    p.add_argument("--page-size", type=positive_int, default=d.page_size, help="search results per page")
    p.add_argument("--max-concepts", type=positive_int, default=d.max_concepts, help="typed concepts per image")
    p.add_argument("--num-images", type=positive_int, default=d.num_images, help="images per draw")
    p.add_argument("--device", default=d.device, help="where the checkpoint's sampler runs (auto | cpu | cuda)")
    p.add_argument("--screenshots", metavar="DIR", help="save a screenshot of each tab (driven in headless Chromium "
                   "with the demo's files) into DIR, then stop (make app-screenshots)")
    a, settings = parse_command(p, argv, RUN_KEYS + ("checkpoint",))
    conf = AppConf(max_upload_mb=a.max_upload_mb, page_size=a.page_size, max_concepts=a.max_concepts,
                   num_images=a.num_images, device=a.device)
    import importlib.util

    if importlib.util.find_spec("gradio") is None:   # an optional extra: say which, not an ImportError traceback
        print("sonify.app: needs gradio, the `app` extra: pip install -e '.[app]' (make install includes it)", file=sys.stderr)
        return 2
    run_dir = run_of(p, settings)
    temp = TempFiles()
    # a stop by SIGTERM (a service manager, `timeout`) unwinds like Ctrl-C, so the temp folder goes too
    signal.signal(signal.SIGTERM, _interrupt)
    from sonify.webapp.ui import launch, offline_env

    offline_env(str(temp.dir))
    try:
        from sonify.webapp.runtime import AppRun

        app = AppRun(run_dir, settings.get("checkpoint"), conf, temp, background=True)
        if a.screenshots:
            from sonify.webapp.screenshots import take

            print("\n".join(f"wrote {s}" for s in take(app, a.screenshots, a.host, a.port)))
        else:
            launch(app, a.host, a.port)
    except AppError as e:
        print(f"sonify.app: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        temp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
