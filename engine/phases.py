"""Phase labels of the voxel volumes (uint8 codes) and their names.

One vocabulary for every stage: the scenario file names phases, geometry writes the
codes, physics picks conductors by them and the run file stores them (attribute
``label_names``).
"""

PORE = 0
ACTIVE = 1
SOLID_ELECTROLYTE = 2
CARBON = 3
ECBD = 4
LI_METAL = 5
COLLECTOR = 6

LABEL_NAMES = {
    PORE: "pore",
    ACTIVE: "active",
    SOLID_ELECTROLYTE: "solid_electrolyte",
    CARBON: "carbon",
    ECBD: "ecbd",
    LI_METAL: "li_metal",
    COLLECTOR: "collector",
}
# Phases that conduct Li ions: an active face touching one of them can react.
ION_CONDUCTORS = (SOLID_ELECTROLYTE, ECBD)
LABEL_BY_NAME = {name: code for code, name in LABEL_NAMES.items()}
