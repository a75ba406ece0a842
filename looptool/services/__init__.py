"""LoopTool's services. Each module defines one :class:`looptool.kernel.runtime.Service` named
``service`` and is registered under the ``looptool.services`` entry-point group. Services import
the kernel and the method's modules, never each other."""
