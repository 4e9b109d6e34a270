"""From network outputs to calls: Algorithm 1 dispatch, optimal dispatch, the karyotype
string and the ISCN patient summary."""
