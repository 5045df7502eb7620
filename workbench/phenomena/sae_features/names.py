"""Person names for the "reading" claim: is the word where a feature fires most a person's name?

Capitalisation is not enough (a feature selected for firing at names also fires at "Miami" and
"Marlins", which are capitalised but are no person's name). :data:`PERSON_NAMES` is a fixed list of
common English given names, written down before any feature's contexts were read: the IOI prompts'
names (:data:`workbench.phenomena.ioi.dataset.NAMES`) plus common given names of other people and
of story characters. Month names and given names that are mostly common words (April, May, June,
Will) are left out. :func:`is_person_name` matches a whole word exactly (case-sensitive), so
"Lucy" counts and "lucy", "Luc" or "Miami" do not.

>>> is_person_name("Lucy"), is_person_name("Miami"), is_person_name("Marlins"), is_person_name("lucy")
(True, False, False, False)
"""

from __future__ import annotations

from workbench.phenomena.ioi.dataset import NAMES

__all__ = ["PERSON_NAMES", "is_person_name"]

_OTHERS = """
Aaron Abby Abigail Ada Adrian Aiden Alan Albert Alex Alexander Alexandra Alfie Alice Alicia Alison
Allison Amanda Amber Amelia Amy Andrea Andy Angela Anna Anne Annie Anthony Archie Arthur Ashley
Audrey Austin Ava Barbara Beatrice Becky Bella Ben Benjamin Benny Beth Betty Bill Billy Blake Bobby
Bonnie Brad Bradley Brandon Brenda Brian Bridget Brooke Bruce Bryan Caleb Cameron Camila Carl Carla
Carlos Carol Caroline Carrie Casey Catherine Cathy Charlie Charlotte Chloe Chris Christian
Christina Christine Christopher Cindy Claire Clara Colin Connor Craig Cynthia Daisy Dale Daniel
Danny Daphne Dave David Dean Debbie Deborah Denise Dennis Derek Diana Diane Dominic Donald Donna
Dorothy Doug Douglas Dylan Eddie Edith Edward Eleanor Elena Eli Elijah Elizabeth Ella Ellie Emily
Emma Eric Erica Erin Ethan Eva Evan Eve Evelyn Felix Finn Fiona Florence Frank Fred Freddie
Frederick Gabriel Gary Gavin Gemma George Georgia Gerald Gina Gloria Gordon Greg Gregory Hannah
Harold Harry Harvey Hazel Heather Helen Henry Holly Howard Hugo Ian Isaac Isabel Isabella Isla Ivan
Jack Jackson Jacob Jake James Jamie Jane Janet Jasmine Jason Jay Jean Jeff Jeffrey Jennifer Jenny
Jeremy Jerry Jesse Jessica Jill Jim Jimmy Joan Joe Joel Joey John Johnny Jonathan Jordan Joseph
Josh Joshua Joy Joyce Judith Judy Julia Julian Julie Justin Karen Kate Katherine Katie Kayla Keith
Kelly Ken Kenneth Kevin Kim Kyle Larry Laura Lauren Leah Leo Leon Leonard Liam Lily Lilly Linda
Lisa Logan Louis Louise Lucas Lucy Luke Lydia Maggie Mandy Margaret Maria Marie Marion Mark Martha
Martin Mary Matt Matthew Maya Megan Melissa Mia Michael Michelle Mike Mila Millie Milo Molly Monica
Nancy Naomi Natalie Nathan Neil Nick Nicholas Nicole Noah Nora Olive Oliver Olivia Oscar Owen
Pamela Patricia Patrick Paul Paula Peggy Penny Peter Phil Philip Phoebe Polly Rachel Ralph Rebecca
Richard Rick Riley Rita Rob Robert Robin Roger Ron Ronald Rosa Rose Rosie Ruby Russell Ruth Ryan Sally
Sam Samantha Samuel Sandra Sara Sarah Scott Sean Sebastian Shirley Simon Sophia Sophie Stella
Stephanie Stephen Steve Steven Sue Susan Suzy Sylvia Ted Teddy Teresa Theo Theodore Thomas Tim
Timmy Timothy Tina Toby Todd Tom Tommy Tony Tracy Tyler Valerie Vanessa Victor Victoria Vincent
Violet Walter Wendy William Willow Zach Zoe
"""

#: Common English given names (the IOI names included); see the module docstring.
PERSON_NAMES: frozenset[str] = frozenset(NAMES) | frozenset(_OTHERS.split())


def is_person_name(word: str) -> bool:
    """Whether ``word`` (leading and trailing spaces ignored) is one of :data:`PERSON_NAMES`."""
    return word.strip() in PERSON_NAMES
