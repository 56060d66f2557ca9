"""What each op does under torch.autocast: what the torch op it replaces does there, by torch's
own autocast lists (ATen's autocast_mode.h / autocast_mode.cpp).

    op                                 CUDA    CPU     the torch op and its list
    group_norm                         fp32    -       group_norm: CUDA fp32; not on CPU's lists
                                                       (our kernel takes float16/bfloat16 input
                                                       with float32 weight, as ATen's does)
    lstm_cell                          lower   -       lstm_cell: CUDA lower precision
    lstm_layer, lstm_layer_train       lower   lower   nn.LSTM: cuDNN's _cudnn_rnn casts on CUDA,
                                                       mkldnn_rnn_layer is on CPU's list
    iwae_bound, importance_weights,    fp32    -       logsumexp and softmax: CUDA fp32
    jvi_bound
    gcn_propagate                      fp32    fp32    PyG's message passing: its float32 edge
                                                       weights promote half features

fp32: float16/bfloat16 tensors are cast to float32; lower: float32 tensors are cast to the
autocast dtype (torch.get_autocast_dtype); "-": nothing changes. As in ATen, only floating
tensors on the autocast device are cast, and float64 never is. The graph structure and GBDT
ops are on no list: POLICIES names them with no rule, so every op's entry is explicit (the op
contract test checks it).

The public functions (pynotes.ops) cast before they run, so autograd records the casts; the
raw operators (torch.ops.pynotes.*) get the same rule as Autocast-key kernels.
"""
import torch

POLICIES = {
    "group_norm": {"cuda": "fp32"},
    "lstm_cell": {"cuda": "lower"},
    "lstm_layer": {"cuda": "lower", "cpu": "lower"},
    "lstm_layer_train": {"cuda": "lower", "cpu": "lower"},
    "iwae_bound": {"cuda": "fp32"},
    "importance_weights": {"cuda": "fp32"},
    "jvi_bound": {"cuda": "fp32"},
    "gcn_propagate": {"cuda": "fp32", "cpu": "fp32"},
    # none: on no autocast list (integer graph structure; GBDT, which PyTorch has no op for)
    "graph_csr": {}, "graph_values": {},
    "gbdt_bin": {}, "gbdt_histogram": {}, "gbdt_best_splits": {}, "gbdt_advance": {},
    "gbdt_predict": {}, "gbdt_grow_tree": {},
}
_LOW = (torch.float16, torch.bfloat16)


def _cast_one(t, device_type, policy):
    if not isinstance(t, torch.Tensor) or t.device.type != device_type:
        return t
    if policy == "fp32" and t.dtype in _LOW:
        return t.float()
    if policy == "lower" and t.dtype == torch.float32:
        return t.to(torch.get_autocast_dtype(device_type))
    return t


def cast(op, tensor, args):
    """args with op's autocast rule applied when autocast is on for tensor's device."""
    if not torch._C._is_any_autocast_enabled():  # (the common case, in one cheap call)
        return args
    device_type = tensor.device.type
    policy = POLICIES[op].get(device_type)
    if policy is None or not torch.is_autocast_enabled(device_type):
        return args
    return tuple(_cast_one(t, device_type, policy) for t in args)


def register_kernels(library):
    """The same rules as Autocast-key kernels of the raw operators in `library`."""
    for op, policies in POLICIES.items():
        if not hasattr(torch.ops.pynotes, op):
            continue  # a composite (jvi_bound): its public function casts
        overload = getattr(torch.ops.pynotes, op).default
        for device_type, policy in policies.items():
            key = "AutocastCUDA" if device_type == "cuda" else "AutocastCPU"
            excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

            def kernel(keyset, *args, _op=overload, _device=device_type, _policy=policy,
                       _excluded=excluded):
                with torch._C._ExcludeDispatchKeyGuard(_excluded):
                    return _op(*(_cast_one(t, _device, _policy) for t in args))

            library.impl(op, kernel, key, with_keyset=True)
