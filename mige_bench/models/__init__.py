"""Model registry: name -> ``"module:Class"``, imported lazily. Any ``module:Class`` path works too."""

MODELS: dict[str, str] = {
    "identity": "mige_bench.models.sanity:IdentityGenerator",
    "copy_reference": "mige_bench.models.sanity:CopyReferenceGenerator",
    "folder": "mige_bench.models.folder:FolderGenerator",
    "diffusers": "mige_bench.models.diffusers_pipeline:DiffusersGenerator",
    "mige": "mige_bench.models.mige:MIGEGenerator",
}
