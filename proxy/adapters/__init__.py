"""Provider shapes other than OpenAI's: pure translations of requests, answers, stream events
and errors, one module per shape, registered in `registry`."""
