"""Writing one export into a temporary folder, checking it, and recording its parity figures (see
:func:`finetune.exporting.export`)."""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable

import torch

from . import parity
from .graph import write_graph

#: the record a folder format other than ONNX gets beside its own files
RECORD_FILE = 'finetune_export.json'


class _Encoder:
    """What :func:`finetune.evaluate` needs of a model, around an exported folder's own loader."""

    def __init__(self, encode: Callable[[list, int], Any], model):
        self._encode, self.name, self.modality = encode, f'{model.name} (export)', model.modality
        self.check_file = model.check_file

    def encode(self, items, batch_size: int = 32):
        return self._encode(list(items), batch_size)


def _on_cpu(model):
    """`model` itself when its weights are on the CPU in fp32, else a CPU fp32 copy (the user's stays put)."""
    p = next(model.parameters(), None)
    if p is None or (p.device.type == 'cpu' and p.dtype == torch.float32):
        return model
    return copy.deepcopy(model).to('cpu', torch.float32)


def _check(model, exported, items: dict, eval_data, torch_metrics: dict | None, precision: str, say) -> dict:
    """The parity figures of `exported` (a loaded export) against `model`, passed through the gate."""
    encoders = {t: (lambda xs, one=one: one.encode(xs, batch_size=parity.CHECK_BATCH_SIZE))
                for t, one in parity.towers_of(exported).items()}
    figures = parity.compare(model, encoders, items)
    if eval_data is not None:
        from ..evaluation import evaluate
        theirs = evaluate(exported, eval_data)
        shared = [k for k, v in torch_metrics.items() if isinstance(v, (int, float)) and k in theirs]
        figures['metrics'] = {'torch': torch_metrics, 'export': theirs, 'max_difference': max(
            (abs(float(torch_metrics[k]) - float(theirs[k])) for k in shared), default=0.0)}
    parity.gate(figures, precision, repr(display_name(model)), say)
    return figures


def _write_onnx(model, folder: str, quantize: str | None, items: dict, eval_data, torch_metrics, say,
                trust_remote_code: bool = False, int8_min_cosine: float | None = None) -> dict:
    from ..artifacts import load, write_backbone_files
    towers = parity.towers_of(model)
    graphs = {t: 'model.onnx' if t == '' else f'{t}.onnx' for t in towers}
    name = write_backbone_files(model, folder)
    inputs = {t: write_graph(one, items[t][:2], os.path.join(folder, graphs[t])) for t, one in towers.items()}
    record = {'format': 'onnx', 'quantize': None, 'graphs': graphs, 'inputs': inputs, 'parity': {}}
    _write_config(model, folder, name, record)
    fp32 = load(folder, trust_remote_code=trust_remote_code)
    record['parity']['fp32'] = _check(model, fp32, items, eval_data, torch_metrics, 'fp32', say)
    if quantize is not None:
        from .quantization import Calibration, quantize_int8
        exported = parity.towers_of(fp32)
        record['int8'] = {}
        for tower, file in graphs.items():
            reference = towers[tower].encode(items[tower], batch_size=parity.CHECK_BATCH_SIZE)
            calibration = Calibration(items[tower], exported[tower].graph_inputs, reference,
                                      parity.CHECK_BATCH_SIZE)
            target = {} if int8_min_cosine is None else {'min_cosine': float(int8_min_cosine)}
            record['int8'][tower] = quantize_int8(os.path.join(folder, file), towers[tower].backbone.int8_fp32_nodes,
                                                  calibration, say, **target)
        record['quantize'] = quantize
        record['parity'][quantize] = _check(model, load(folder, trust_remote_code=trust_remote_code), items,
                                            eval_data, torch_metrics, quantize, say)
    return _write_config(model, folder, name, record)


def _write_config(model, folder: str, name: str, record: dict) -> dict:
    from ..artifacts import artifact_config, write_config
    saved = getattr(model, 'artifact_config', None) or {}
    extra = {'export': record}
    if saved.get('training'):
        extra['training'] = saved['training']
    config = _described(artifact_config(model, name, saved.get('metrics'), extra), saved)
    write_config(folder, config)
    return config


def display_name(model) -> str:
    """The name a user knows `model` by: its artifact's original name for a loaded model."""
    return (getattr(model, 'artifact_config', None) or {}).get('original_name') or model.name


def _described(config: dict, saved: dict) -> dict:
    """`config` naming the model as its artifact did (a loaded model's name points into the artifact)."""
    for key in ('original_name', 'family'):
        if saved.get(key):
            config[key] = saved[key]
    return config


def _write_format(model, fmt, folder: str, items: dict, eval_data, torch_metrics, say,
                  trust_remote_code: bool = False) -> dict:
    from ..artifacts import artifact_config
    from ..errors import ExportError, FinetuneError
    try:
        facts = fmt.write(model, folder) or {}
        loader = fmt.check(model, folder, trust_remote_code=trust_remote_code) if fmt.check is not None else None
    except FinetuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's writer or loader; its failure is the export's
        raise ExportError(f'format {fmt.name!r} failed on {display_name(model)!r}: {type(exc).__name__}: '
                          f'{str(exc)[:300]}. Nothing was written.') from exc
    record: dict[str, Any] = {'format': fmt.name, **facts, 'parity': {}}
    if loader is not None:
        record['parity']['fp32'] = _check(model, _Encoder(loader, model), items, eval_data, torch_metrics, 'fp32',
                                          say)
    else:
        record['unchecked'] = True
        say(f'format {fmt.name!r} gives no loader to check the export with: it is written WITHOUT the parity check')
    saved = getattr(model, 'artifact_config', None) or {}
    config = _described(artifact_config(model, model.name, saved.get('metrics'),
                                        {'export': record, 'training': saved.get('training')}), saved)
    with open(os.path.join(folder, RECORD_FILE), 'w') as f:
        json.dump(config, f, indent=2)
    return config


def _onnx_usage(config: dict) -> str:
    record = config['export']
    lines = ['# the graph alone, on onnxruntime (inputs as the model\'s preprocessing makes them)',
             'import onnxruntime as ort', '']
    for tower, file in record['graphs'].items():
        names = ', '.join(f"'{n}': ..." for n in record['inputs'][tower])
        lines += [f"session = ort.InferenceSession('{file}')" + (f'   # the {tower} tower' if tower else ''),
                  f"embeddings = session.run(['embeddings'], {{{names}}})[0]"]
    return '\n'.join(lines)


def _parity_lines(record: dict) -> list[str]:
    lines = ['## Export parity', '', f"Format: {record['format']}" + (f", quantized {record['quantize']}"
                                                                      if record.get('quantize') else '') + '.', '',
             '| precision | items | min cosine | mean cosine | largest metric difference |', '|---|---|---|---|---|']
    if record.get('unchecked'):
        lines.append('| not checked: the format gives no loader finetune can run | | | | |')
    for precision, f in record.get('parity', {}).items():
        diff = f.get('metrics', {}).get('max_difference')
        lines.append(f"| {precision} | {f['items']} | {f['min_cosine']:.6f} | {f['mean_cosine']:.6f} | "
                     f"{'' if diff is None else f'{diff:.4f}'} |")
    return lines


def write_export(model, fmt, folder: str, quantize: str | None, items: dict, eval_data: Any,
                 say: Callable[[str], None], trust_remote_code: bool = False,
                 int8_min_cosine: float | None = None) -> None:
    """Write `model` as format `fmt` (None: ONNX) into `folder`, atomically, once it passes the parity gate;
    `int8_min_cosine`: the int8 fallback's target (:func:`~finetune.exporting.quantization.quantize_int8`)."""
    from ..artifacts import folder_written_atomically
    from ..card import CARD_FILE, model_card
    was_training = model.training
    model.eval()
    try:
        cpu = _on_cpu(model)
        torch_metrics = None
        if eval_data is not None:
            from ..evaluation import evaluate
            torch_metrics = evaluate(cpu, eval_data)
        with folder_written_atomically(folder) as tmp:
            if fmt is None:
                config = _write_onnx(cpu, tmp, quantize, items, eval_data, torch_metrics, say, trust_remote_code,
                                     int8_min_cosine)
                usages = [_onnx_usage(config)]
            else:
                config = _write_format(cpu, fmt, tmp, items, eval_data, torch_metrics, say, trust_remote_code)
                usages = [fmt.usage(folder)] if fmt.usage is not None else []
            title = f"{config['original_name']} ({fmt.name if fmt else 'ONNX'}" + \
                (f' {quantize})' if quantize else ')')
            with open(os.path.join(tmp, CARD_FILE), 'w', encoding='utf-8') as f:
                f.write(model_card(config, usages, title=title, more=_parity_lines(config['export']),
                                   loads_with_finetune=fmt is None))
    finally:
        model.train(was_training)
