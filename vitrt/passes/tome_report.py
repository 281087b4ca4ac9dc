"""Token-merge outputs for OUT: (placeholder, filled below)."""


def register_outputs(ctx, plan, dense):
    return None
