"""DPO Studio app: base vs DPO side by side (GPT-2, T5), blind A/B votes, implicit-reward scoring.

    python app.py [--models-dir DIR] [--config FILE] [--port N] [--votes-file F]

Port: --port or $GRADIO_SERVER_PORT (default 7860); host: $GRADIO_SERVER_NAME (default 127.0.0.1; a Space sets
0.0.0.0). Model sources: see dpo_studio/inference/model_sources.py. The app itself lives in dpo_studio/ui/.
"""

import sys

from dpo_studio.ui import main

if __name__ == "__main__":
    main(sys.argv[1:])
