"""vpclib: VideoPatchCore (Ahn et al., ACCV 2024) as a small, readable library.

Data flows one way, one module per stage:

    datasets (videos, clips, labels) -> objects (boxes, crops) -> encoder (layer2/layer3 maps)
    -> features (spatial / temporal / high-level vectors) -> coreset -> memory (three memories)
    -> scores (s(Q, M), clip -> frame) -> fusion -> metrics -> figures

Shape legend used in every docstring and shape comment:

    B  clips              T  frames per clip (clip length)
    K  objects            C  channel groups of the local stream
    N  memory vectors     D  vector dims
    H x W  spatial grid (28 x 28 local maps, 7 x 7 patches, 14 x 14 global maps)
"""

__version__ = "0.1.0"
