"""LoopTool's services, installed as ``looptool_services`` (so no generic ``services`` import
name is claimed). Each module defines one :class:`looptool.runtime.Service` named ``service``
and is registered under the ``looptool.services`` entry-point group."""
