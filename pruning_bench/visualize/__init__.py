"""Token maps: which patches survive, or which merge together, after chosen blocks, drawn over the images."""
from .attention_file import display_images, load_record, maps_from_record, recorded_images
from .draw import denormalise, figure_pixels, normalisation_of, render_token_maps
from .maps import TokenMaps, live_token_maps, maps_from_kept_indices, maps_from_owner, maps_from_source

__all__ = [
    "TokenMaps", "live_token_maps", "maps_from_source", "maps_from_kept_indices", "maps_from_owner", "load_record", "maps_from_record",
    "display_images", "recorded_images", "render_token_maps", "figure_pixels", "denormalise", "normalisation_of",
]
