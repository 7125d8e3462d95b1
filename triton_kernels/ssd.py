def ssd_exchange_forward(*args):
    raise NotImplementedError


def ssd_exchange_backward(grads, *args):
    raise NotImplementedError


def check_limits(*args):
    pass
