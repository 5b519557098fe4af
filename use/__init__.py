"""Using a model directory: generate text (`use.generate`), score it on text or benchmark tasks (`use.evaluate`,
`use.scoring`), publish it to a local hub (`use.push`). Each module is a command and the Python function it calls."""
