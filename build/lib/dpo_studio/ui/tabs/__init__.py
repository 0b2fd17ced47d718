"""One module per tab: `layout(...)` builds its components inside `gr.Tab`, `wire(...)` binds its events.

UI events are private and named ui_*, so the public names (/compare, /blind, ...) stay free for `gr.api`
(`dpo_studio.ui.api`).
"""
