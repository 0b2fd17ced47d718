"""No module of dpo_studio swaps a method on a live object or builds a class at run time (issue 18).

Two checks. The source: an AST scan of every module for `types.MethodType`, assignments of functions/lambdas/partials
(or anything) to attributes named like methods (`x.forward = ...`, `self.forward = ...`), `setattr(obj, "<method>",
...)`, and three-argument `type(...)`; replacing a submodule (`setattr(parent, name, module)`) is not a method swap.
The run: each trainer family built on a tiny model and run for a loss; then no submodule of its models holds a
function in its instance dict in place of a method of its class (every `module.forward` is `type(module).forward`),
except the one swap TRL 1.16's own
`DPOTrainer.__init__` makes (`trl.trainer.utils.add_fused_lm_head`, TRL's code, not ours)."""

from __future__ import annotations

import ast
import functools
import types
from pathlib import Path

import torch
import trl.trainer.utils
from datasets import Dataset

PACKAGE = Path(__file__).resolve().parents[1] / "dpo_studio"
METHOD_NAMES = {"forward", "__call__", "generate", "_cast_input_dtype", "train", "eval", "step", "backward"}


def _is_function_value(node: ast.AST, local_functions: set[str]) -> bool:
    if isinstance(node, ast.Lambda):
        return True
    if isinstance(node, ast.Name):
        return node.id in local_functions
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in {"partial", "MethodType", "wraps", "update_wrapper"}
    return False


def live_patches(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    local_functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "MethodType":
            found.append((node.lineno, "types.MethodType"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "type" and len(node.args) == 3:
            found.append((node.lineno, "3-argument type(...)"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and len(node.args) == 3:
            name = node.args[1]
            if isinstance(name, ast.Constant) and (name.value in METHOD_NAMES or _is_function_value(node.args[2], local_functions)):
                found.append((node.lineno, f"setattr(..., {name.value!r}, ...)"))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if not isinstance(target, ast.Attribute):
                    continue
                on_self = isinstance(target.value, ast.Name) and target.value.id == "self"
                if target.attr in METHOD_NAMES or (not on_self and _is_function_value(node.value, local_functions)):
                    found.append((node.lineno, f"<obj>.{target.attr} = ..."))
    return found


def test_the_scan_finds_each_kind_of_swap():
    source = (
        "import types\n"
        "def f(self): pass\n"
        "model.forward = types.MethodType(f, model)\n"
        "layer.helper = f\n"
        "obj.cb = lambda: 1\n"
        "setattr(obj, 'forward', g)\n"
        "Fast = type('Fast', (A,), {})\n"
        "self.forward_count = 1\n"            # not a swap: state on self
        "self.forward = f\n"                  # a swap, on self
        "setattr(parent, name, Module())\n"   # not a swap: a submodule replaced
        "x.count = 3\n"
    )
    kinds = [kind for _, kind in live_patches(source)]
    assert kinds.count("types.MethodType") == 1
    assert "<obj>.forward = ..." in kinds and "<obj>.helper = ..." in kinds and "<obj>.cb = ..." in kinds
    assert "setattr(..., 'forward', ...)" in kinds and "3-argument type(...)" in kinds
    assert kinds.count("<obj>.forward = ...") == 2
    assert len(kinds) == 7


def test_no_module_swaps_a_method_on_a_live_object():
    offences = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {kind}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, kind in live_patches(path.read_text(encoding="utf-8"))
    ]
    assert not offences, "live method swaps:\n" + "\n".join(offences)


# ------------------------------------------------------------------------------------------------------ at run time
TRL_PATCH_FILE = Path(trl.trainer.utils.__file__).resolve()


def instance_functions(model: torch.nn.Module) -> list[tuple[str, str, Path | None]]:
    """(submodule, attribute, defining file) of every function held in a submodule's instance dict that shadows a
    method of its class: a method swapped on the live object. (Callables a class keeps as state, e.g. PEFT's saved
    `base_model_prepare_inputs_for_generation` or an activation's `act`, shadow nothing.)"""
    found = []
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            shadows = callable(getattr(type(module), attr, None))
            if shadows and isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
                func = getattr(value, "__func__", getattr(value, "func", value))
                code = getattr(func, "__code__", None)
                found.append((name or "<model>", attr, Path(code.co_filename).resolve() if code else None))
    return found


def trainers(tmp_path):
    from test_speed import build, dpo_args, rows, tiny_model
    from trainer_helpers import word_tokenizer

    from dpo_studio.training import speed

    yield "causal LoRA", build(tmp_path / "c", t5=False, fast=True)
    yield "seq2seq LoRA", build(tmp_path / "s", t5=True, fast=True, precompute_ref_log_probs=False)
    yield "seq2seq (plain)", build(tmp_path / "p", t5=True, fast=False)
    data = Dataset.from_list(rows(8, seed=1))
    for t5 in (False, True):  # full fine-tuning: a separate reference model, patched by TRL too
        cls = speed.FastSeq2SeqDPOTrainer if t5 else speed.CausalDPOTrainer
        # (TRL would load the causal reference from the Hub id; our seq2seq trainer copies the model itself)
        yield f"{'seq2seq' if t5 else 'causal'} full", cls(
            model=tiny_model(t5), ref_model=None if t5 else tiny_model(t5), train_dataset=data,
            args=dpo_args(tmp_path / f"full{t5}", precompute_ref_log_probs=False), processing_class=word_tokenizer(t5))


def test_no_forward_is_swapped_on_a_live_model_except_trls_own(tmp_path, single_thread):
    checked = 0
    for family, trainer in trainers(tmp_path):
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.compute_loss(trainer.model, batch).backward()  # the speed forwards have run
        for model in (trainer.model, trainer.ref_model):
            if model is None:
                continue
            ours = [(m, a, f) for m, a, f in instance_functions(model) if f != TRL_PATCH_FILE]
            assert not ours, f"{family}: instance-level functions on live modules: {ours}"
            for name, module in model.named_modules():
                if "forward" not in vars(module):
                    assert module.forward.__func__ is type(module).forward, (family, name)
                    checked += 1
    assert checked > 50
