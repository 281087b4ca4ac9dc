"""Graph passes, one module each. A pass edits the canonical graph through the graph view and declares its
contract (see :mod:`vitrt.compiler.pass_manager`); function-changing passes carry their torch-twin transform."""
