"""Results by C-STORE (lesionseg/pacs/cstore.py, destinations.py): the destinations setting, a
real pynetdicom Storage SCP on loopback receiving a real SEG, failures told apart (retryable or
not) from the SCP's statuses, rejections, refused connections and silence, the composite with a
failing target, the pusher over it, and a real Orthanc's DICOM port (integration).
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator

import pydantic
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage

from lesionseg.errors import PushError, SettingsError
from lesionseg.pacs.cstore import CStoreClient
from lesionseg.pacs.destinations import Destinations
from lesionseg.pacs.dicomweb import StowClient
from lesionseg.settings import Settings
from lesionseg.settings.destinations import Destination, parse_destinations
from service.launcher import free_port
from tests.pacs import ct_small, make_test_seg

STORAGE_CLASSES = [cx.abstract_syntax for cx in AllStoragePresentationContexts]


class Receiver:
    """A pynetdicom Storage SCP on a free loopback port, AE title RECEIVER (the called AE
    title is checked): answers each C-STORE with ``status`` after ``delay_s``, or rejects
    every association with ``reject`` = (result, source, reason)."""

    def __init__(self, sop_classes=STORAGE_CLASSES, syntaxes=ALL_TRANSFER_SYNTAXES) -> None:
        self.reset()
        ae = AE(ae_title="RECEIVER")
        ae.require_called_aet = True
        for uid in sop_classes:
            ae.add_supported_context(uid, syntaxes)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def reset(self) -> None:
        self.status, self.delay_s, self.reject = 0x0000, 0.0, None
        self.received: list[tuple[str, str, pydicom.Dataset]] = []  # (calling AE, syntax, ds)
        self.associations = 0

    def client(self, ae_title: str = "RECEIVER", timeout_s: float = 5.0) -> CStoreClient:
        return CStoreClient(Destination(ae_title, "127.0.0.1", self.port), "LESIONSEG", timeout_s)

    def uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for _, _, ds in self.received]

    def _on_requested(self, event: evt.Event) -> None:
        if self.reject:
            event.assoc.acse.send_reject(*self.reject)
            event.assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        self.associations += 1

    def _on_store(self, event: evt.Event) -> int:
        time.sleep(self.delay_s)
        if self.status in (0x0000, 0xB000, 0x0111):
            calling = str(event.assoc.requestor.ae_title).strip()
            dataset = event.dataset
            self.received.append((calling, str(event.context.transfer_syntax), dataset))
        return self.status


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[Receiver]:
    scp = Receiver()  # one for the module: each shutdown takes ~0.5 s (socketserver's poll)
    yield scp
    scp.server.shutdown()


@pytest.fixture
def receiver(shared_receiver) -> Receiver:
    shared_receiver.reset()
    return shared_receiver


@pytest.fixture(scope="module")
def seg() -> bytes:
    return make_test_seg(ct_small())


def uid_of(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_destinations_parse_with_loud_errors():
    assert parse_destinations(None) == parse_destinations("  ") == ()
    parsed = parse_destinations(" PACS@10.0.0.5:104, MY VIEWER@[FD00::9]:11112,R@pacs.local:4242")
    assert parsed == (
        Destination("PACS", "10.0.0.5", 104),
        Destination("MY VIEWER", "fd00::9", 11112),
        Destination("R", "pacs.local", 4242),
    )
    assert [d.url for d in parsed] == [
        "dicom://PACS@10.0.0.5:104",
        "dicom://MY VIEWER@[fd00::9]:11112",
        "dicom://R@pacs.local:4242",
    ]
    bad = {
        "PACS@10.0.0.5": "bad entry",  # no port
        "10.0.0.5:104": "bad entry",  # no AE title
        "@10.0.0.5:104": "AE title",
        "A_TITLE_LONGER_THAN_16@h:104": "AE title",
        "A\\B@h:104": "backslash",
        "PACS@10.0.0.5:0": "port",
        "PACS@10.0.0.5:65536": "port",
        "PACS@10.0.0.5:http": "port",
        "PACS@fd00::9:104": "not an IP address",  # IPv6 needs brackets
        "PACS@10.0.0.500:104": "not an IP address",
        "PACS@bad_host:104": "not an IP address",
        "PACS@h:104,": "bad entry",  # an empty entry
        "PACS@h:104,PACS@h:104": "named twice",
    }
    for text, what in bad.items():
        with pytest.raises(SettingsError, match=what) as raised:
            parse_destinations(text)
        assert "LESIONSEG_DICOM_DESTINATIONS" in str(raised.value), text
    with pytest.raises(pydantic.ValidationError, match="dicom_destinations"):
        Settings(dicom_destinations="PACS@10.0.0.5")  # reported at start


def test_a_seg_and_an_rle_image_arrive_in_one_association_in_their_syntaxes(receiver, seg):
    mr = get_testdata_file("MR_small_RLE.dcm")
    with open(mr, "rb") as f:
        rle = f.read()
    receiver.client().store([seg, rle])
    assert receiver.associations == 1
    ((caller, seg_syntax, got), (_, mr_syntax, got_mr)) = receiver.received
    assert (caller, seg_syntax, mr_syntax) == ("LESIONSEG", ExplicitVRLittleEndian, RLELossless)
    sent = pydicom.dcmread(io.BytesIO(seg))
    assert (got.Modality, got.SOPInstanceUID) == ("SEG", sent.SOPInstanceUID)
    assert got.PixelData == sent.PixelData
    assert got_mr.PixelData == pydicom.dcmread(mr).PixelData  # still RLE, not re-encoded


def test_a_destination_that_takes_implicit_vr_only_gets_the_seg_converted(seg):
    implicit_only = Receiver(syntaxes=[ImplicitVRLittleEndian])
    try:
        implicit_only.client().store([seg])
        ((_, syntax, got),) = implicit_only.received
        assert syntax == ImplicitVRLittleEndian
        assert got.PixelData == pydicom.dcmread(io.BytesIO(seg)).PixelData
    finally:
        implicit_only.server.shutdown()


REFUSALS = [
    (0xA700, True),  # refused: out of resources
    (0xA7FE, True),
    (0x0110, True),  # processing failure
    (0x0213, True),  # resource limitation
    (0xA900, False),  # data set does not match SOP class
    (0xC000, False),  # cannot understand
    (0x0122, False),  # SOP class not supported
    (0x0124, False),  # not authorised
]


@pytest.mark.parametrize(
    ("status", "retryable"), REFUSALS, ids=[f"0x{status:04X}" for status, _ in REFUSALS]
)
def test_refusal_statuses_are_retryable_or_permanent(receiver, seg, status, retryable):
    receiver.status = status
    with pytest.raises(PushError) as refused:
        receiver.client().store([seg])
    assert refused.value.retryable is retryable
    assert f"0x{status:04X}" in str(refused.value) and uid_of(seg) in str(refused.value)


@pytest.mark.parametrize("status", [0xB000, 0x0111], ids=["coerced", "duplicate"])
def test_warnings_and_duplicates_count_as_stored(receiver, seg, status):
    receiver.status = status
    receiver.client().store([seg])
    assert receiver.uids() == [uid_of(seg)]


def test_rejections_refused_connections_and_silence(receiver, seg):
    with pytest.raises(PushError, match="rejected") as wrong_ae:
        receiver.client(ae_title="NOT-RECEIVER").store([seg])  # rejected-permanent
    assert not wrong_ae.value.retryable and "Called AE title not recognised" in str(wrong_ae.value)

    receiver.reject = (0x02, 0x03, 0x02)  # rejected-transient: local limit exceeded
    with pytest.raises(PushError, match="rejected") as busy:
        receiver.client().store([seg])
    assert busy.value.retryable and "Transient" in str(busy.value)

    closed = CStoreClient(Destination("ANY", "127.0.0.1", free_port()), "LESIONSEG", 2.0)
    with pytest.raises(PushError, match="no connection") as refused:
        closed.store([seg])
    assert refused.value.retryable

    with socket.create_server(("127.0.0.1", 0)) as mute:  # takes TCP, never answers
        port = mute.getsockname()[1]
        silent = CStoreClient(Destination("ANY", "127.0.0.1", port), "LESIONSEG", 0.5)
        with pytest.raises(PushError, match=r"not answered within 0\.5 s") as mute_error:
            silent.store([seg])
    assert mute_error.value.retryable

    slow = Receiver()
    slow.delay_s = 1.5  # longer than the client's DIMSE timeout
    try:
        with pytest.raises(PushError, match="no response") as unanswered:
            slow.client(timeout_s=0.5).store([seg])
        assert unanswered.value.retryable
    finally:
        slow.server.shutdown()


def test_unwanted_sop_classes_and_non_dicom_are_permanent(seg):
    ct_only = Receiver(sop_classes=[CTImageStorage])
    try:
        with pytest.raises(PushError, match="accepts none of the SOP classes") as none_taken:
            ct_only.client().store([seg])
        assert not none_taken.value.retryable and "Segmentation" in str(none_taken.value)
        with open(get_testdata_file("CT_small.dcm"), "rb") as f:
            ct = f.read()
        with pytest.raises(PushError, match="did not store 1 of 2") as partly:
            ct_only.client().store([seg, ct])  # the CT is stored, the SEG is not
        assert not partly.value.retryable and uid_of(seg) in str(partly.value)
        assert ct_only.uids() == [uid_of(ct)]
    finally:
        ct_only.server.shutdown()
    with pytest.raises(PushError, match="not a DICOM Part-10 file") as garbage:
        CStoreClient(Destination("A", "127.0.0.1", 1), "LESIONSEG").store([b"not dicom"])
    assert not garbage.value.retryable


def test_destinations_from_settings():
    assert Destinations.from_settings(Settings()) is None
    destinations = Destinations.from_settings(
        Settings(
            dicomweb_url="http://pacs:8042/dicom-web",
            dicom_destinations="PACS@10.0.0.5:104,VIEWER@viewer:11112",
            dicom_ae_title="SEGMENTER",
            dicomweb_timeout_s=7.0,
        )
    )
    stow, pacs, _ = destinations.targets
    assert isinstance(stow, StowClient) and stow.url == "http://pacs:8042/dicom-web/studies"
    assert (pacs.calling_ae, pacs.timeout_s) == ("SEGMENTER", 7.0)
    assert destinations.url == (
        "http://pacs:8042/dicom-web/studies, dicom://PACS@10.0.0.5:104, dicom://VIEWER@viewer:11112"
    )
    only = Destinations.from_settings(Settings(dicom_destinations="PACS@10.0.0.5:104"))
    assert [t.url for t in only.targets] == ["dicom://PACS@10.0.0.5:104"]


def test_the_composite_names_each_failed_target_and_retries_only_if_all_may_pass(receiver, seg):
    down = CStoreClient(Destination("DOWN", "127.0.0.1", free_port()), "LESIONSEG", 2.0)
    with pytest.raises(PushError) as one_down:
        Destinations([receiver.client(), down]).store([seg])
    message = str(one_down.value)
    assert message.startswith("1 of 2 destination(s) failed: dicom://DOWN@127.0.0.1:")
    assert "no connection" in message and "RECEIVER" not in message
    assert one_down.value.retryable
    assert receiver.uids() == [uid_of(seg)]  # the other target got it all the same

    refusing = Receiver()
    refusing.status = 0xA900
    try:
        with pytest.raises(PushError) as mixed:
            Destinations([refusing.client(), down, receiver.client()]).store([seg])
    finally:
        refusing.server.shutdown()
    assert str(mixed.value).startswith("2 of 3 destination(s) failed")
    assert "0xA900" in str(mixed.value) and "no connection" in str(mixed.value)
    assert not mixed.value.retryable  # one refusal is permanent: the retry would not help
    Destinations([receiver.client()]).store([seg])
    assert receiver.uids() == [uid_of(seg)] * 3


def test_the_pusher_sends_a_job_to_the_destinations(receiver, seg, tmp_path):
    from lesionseg.pacs.dicomweb import push_due
    from lesionseg.pacs.job_store import JobStore

    store = JobStore(tmp_path / "jobs")
    job = store.submit([io.BytesIO(seg)], push=True)
    store.claim_next()
    store.complete(job.id, seg, {})
    destinations = Destinations([receiver.client()])
    (pushed,) = push_due(store, destinations, Settings())
    assert pushed.push_state == "pushed", pushed.push_error
    assert receiver.uids() == [uid_of(seg)]


@pytest.mark.integration
def test_a_seg_sent_to_orthancs_dicom_port_is_stored_there(orthanc, seg):
    settings = Settings(dicom_destinations=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    Destinations.from_settings(settings).store([seg])
    uid = uid_of(seg)
    stored = orthanc.instance_file(uid)
    assert (stored.Modality, stored.SOPInstanceUID) == ("SEG", uid)
    assert stored.PixelData == pydicom.dcmread(io.BytesIO(seg)).PixelData
    Destinations.from_settings(settings).store([seg])  # a retry after success: still one copy
    assert orthanc.sop_instance_uids().count(uid) == 1
