"""Recipes: named compression pipelines that the notebooks and the report share.

    registry   Variant (a compressed model as the report sees it) and Recipe
    catalog    the explicit list of every recipe: RECIPES, load_recipes, get_recipe
    quant / prune / distill / pipeline / runtime   the recipe functions, by technique

The only place recipes are registered (the layering test holds it).
"""

from .catalog import RECIPES, get_recipe, load_recipes
from .quant import packed_variant
from .registry import EXECUTIONS, Recipe, RecipeFn, Variant

__all__ = ["Variant", "Recipe", "RecipeFn", "EXECUTIONS", "RECIPES", "load_recipes",
           "get_recipe", "packed_variant"]
