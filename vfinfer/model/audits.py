"""What the precision audits recorded in a manifest allow at run time.

``vfinfer quantize`` (``vfinfer.tools.precision.quantize``) writes an ``int8_audit``; the ONNX
Runtime backend runs precision "int8" only when ``int8_refusal`` finds nothing against it.
"""

import math

MIN_TYPE_AGREEMENT = 0.995




def int8_usable(agreement, min_type_agreement=MIN_TYPE_AGREEMENT):
    """``(usable, reason)`` for holdout ``agreement`` figures: type argmax agreement >= 99.5 %."""
    if not agreement or not agreement.get("images"):
        return False, "no holdout images were checked"
    figure = agreement.get("type_argmax_agreement")
    if figure is None or not math.isfinite(figure):
        return False, "the holdout check gave no type agreement figure"
    text = (f"type argmax agreement with FP32 is {figure:.2%} on {agreement['images']} holdout "
            f"images (required: >= {min_type_agreement:.1%})")
    return figure >= min_type_agreement, text


def int8_refusal(manifest_data):
    """None when the INT8 graphs may run, else one line saying why not (for the backends)."""
    audit = manifest_data.get("int8_audit")
    if not isinstance(audit, dict) and not any(
            key.endswith("_int8") for key in manifest_data.get("graphs", {})):
        return "this model has no INT8 graphs; make them with 'vfinfer quantize DIR --calib ...'"
    if not isinstance(audit, dict):
        return ("the INT8 graphs have no agreement audit in the manifest; make them with "
                "'vfinfer quantize'")
    if audit.get("usable") is not True:
        reason = audit.get("reason") or "no reason recorded"
        return (f"the INT8 graphs are marked unusable: {reason}. Use precision fp32, or re-run "
                "'vfinfer quantize' with other calibration images")
    return None
