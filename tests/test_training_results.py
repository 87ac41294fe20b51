"""`./run.sh results`: the table a page prints is generated from the run's stored OOF predictions, stamped
with the commit and the command, and replaces only its own block of a markdown file."""
import re

from click.testing import CliRunner

from prodcat.cli import main
from prodcat.training.results import BEGIN, END


def test_the_results_table_is_generated_from_the_run_and_written_between_its_markers(trained):
    common, _, tmp = trained
    r = CliRunner().invoke(main, ["scores", *map(str, common)])
    stack_hf1 = re.search(r"\n\s*stack\s+([0-9.]+)", r.output).group(1)  # what `scores` says of the same run
    page = tmp / "page.md"
    page.write_text(f"# Results\n\nkept above\n\n{BEGIN}\nold numbers\n{END}\n\nkept below\n")
    r = CliRunner().invoke(main, ["results", *map(str, common), "--into", str(page)])
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert "kept above" in text and "kept below" in text and "old numbers" not in text
    assert f"| **stack** | **{float(stack_hf1):.4f}** |" in text
    assert re.search(r"stacker fitted at commit [0-9a-f]{7}", text) and "./run.sh all --config" in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    other = tmp / "new.md"  # a file without the markers gets the block appended
    assert CliRunner().invoke(main, ["results", *map(str, common), "--into", str(other)]).exit_code == 0
    assert other.read_text().startswith(BEGIN)
