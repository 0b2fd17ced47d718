"""DPO Studio app: base vs DPO side by side (GPT-2, T5), blind A/B votes, implicit-reward scoring.

    python app.py [--models-dir DIR] [--config FILE] [--port N] [--votes-file F]

Port: --port or $GRADIO_SERVER_PORT (default 7860); host: $GRADIO_SERVER_NAME (default 127.0.0.1; a Space sets
0.0.0.0). Model sources: see dpo_studio/inference/model_sources.py. The app itself lives in dpo_studio/ui/.
"""

import sys

if __name__ == "__main__":
    from dpo_studio.bnb_messages import install_filter

    install_filter()  # before the app imports peft and with it bitsandbytes: see dpo_studio/bnb_messages.py
    from dpo_studio.ui import main

    main(sys.argv[1:])
