"""Execute the notebooks in notebooks/ with nbclient; any cell error fails the test."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fit_diffusivity.ipynb", "inverse_orientations.ipynb", "inverse_contact.ipynb",
                                  "fit_cell_voltage.ipynb", "fit_interface_strength.ipynb"])
def test_notebook_executes(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    if name == "fit_diffusivity.ipynb":
        # the story's claims: D1 and flux_scale recovered and determined, D3 flagged
        assert "NOT DETERMINED" in text and "D3" in text
        assert "2D projections" in text and "3D volumes" in text
    elif name == "inverse_orientations.ipynb":
        # every determined grain within 15°, the one-voxel grain (the last row) undetermined
        assert "determined grains within 15° of the truth: 100%" in text
        last_row = [line for line in text.splitlines() if line.strip().startswith("6 ")][-1].split()
        assert last_row[1] == "1" and last_row[3] == "False", last_row
    elif name == "fit_cell_voltage.ipynb":
        # i0 and D1 from V(t) plus four SOC maps of a synthetic 2C charge + rest: both within
        # 3 Laplace std + 1 % of the truth, and within 5 %, and both determined; the maps
        # narrow D's relative std against the fit to V(t) alone
        recovered = _recovered(text)
        assert set(recovered) == {"exchange_current", "diffusivity_in_plane"}, recovered
        for error, std in recovered.values():
            assert abs(error) < 3 * std + 1 and abs(error) < 5, recovered
        assert re.search(r"exchange_current .* True\n", text) and re.search(r"diffusivity_in_plane .* True\n", text)
        found = re.search(r"σ\(ln D\) with maps ([.\d]+)% vs V\(t\) alone ([.\d]+)%", text)
        with_maps, alone = float(found[1]), float(found[2])
        assert with_maps < 0.8 * alone, (with_maps, alone)
    elif name == "fit_interface_strength.ipynb":
        # σc from V(t) and maps: within 10 % and 3 Laplace std + 1 % of 150 MPa; σc and g0
        # nearly collinear in V(t) (|correlation| > 0.9) and still with the maps, σc well
        # determined once g0 is known
        error, std = _recovered(text)["interface_strength"]
        assert abs(error) < 10 and abs(error) < 3 * std + 1, (error, std)
        assert "determined: True" in text
        corr = float(re.search(r"correlation of ln σc and ln g0 \(Laplace, at the truth\): ([-+.\d]+)", text)[1])
        corr_maps = float(re.search(r"correlation of ln σc and ln g0 with the maps: ([-+.\d]+)", text)[1])
        assert corr_maps < -0.9, corr_maps
        alone = float(re.search(r"σ\(ln σc\) with g0 known: ([.\d]+)%", text)[1])
        assert corr < -0.9 and alone < 10, (corr, alone)
    else:
        # ≥ 90 % of the surface grains classified as the truth, and so every determined one
        line = next(line for line in text.splitlines() if line.startswith("classified correctly"))
        assert float(line.split(":")[1].split("%")[0]) >= 90 and "of which correct: 100%" in line, line


def _recovered(text: str) -> dict:
    """{name: (error %, relative std %)} from the notebooks' "recovered NAME: error E % = … std (std S %)" lines."""
    pattern = r"recovered (\w+): error ([-+.\d]+) % = [.\d]+ std \(std ([.\d]+) %\)"
    return {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(pattern, text)}
